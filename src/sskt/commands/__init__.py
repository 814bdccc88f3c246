"""The ``sskt`` commands, one module per topic; :mod:`sskt.cli` imports them, which registers them.

``kit`` holds what they share (the COMMANDS registry, the ``command`` decorator, config arguments, printing a
run's result) and imports none of them; the work itself is in :mod:`sskt.experiments` and :mod:`sskt.engine`.
"""
