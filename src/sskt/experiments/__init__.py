"""Experiments: what the ``sskt`` commands run, usable from Python without the command line.

The layer between the CLI (``sskt.cli``, ``sskt.commands``) and the engine (``sskt.engine``); nothing in it
parses arguments, and nothing below it imports it.

    compare.py     a grid of methods x seeds on one task (resumable), its tables and charts
    protocols.py   evaluation protocols of a trained checkpoint: per-stage linear probe, k-NN, fine-tuning
    quickstart.py  the 2-minute demo: scratch vs SSKT on the bundled digits
    cache.py       building (or checking) the soft-label cache of an SSKT experiment ahead of training
    noroozi.py     cluster-transfer (Noroozi et al. 2018): cluster a teacher's features, then train on the ids
"""
