"""Commands contributed by sub-packages: importing this module registers them with the CLI."""
from sskt.commands import cache  # noqa: F401,E402  (sskt cache: soft-label cache of an SSKT experiment)
from sskt import compare  # noqa: E402,F401  (registers `sskt compare`)
from sskt.commands import noroozi  # noqa: E402,F401  (sskt pretext, sskt cluster-transfer)
