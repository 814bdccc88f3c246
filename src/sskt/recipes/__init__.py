"""Experiment recipes that ship with sskt: ``sskt train --recipe NAME`` runs one, ``sskt init NAME`` writes it
to a file to edit. Each is a YAML experiment of :class:`sskt.config.ExperimentConfig` without data paths
(set ``data.root=...``).

Example:
    >>> "imagenet-source" in recipe_names()
    True
"""
from __future__ import annotations

from pathlib import Path

from sskt.errors import SSKTError

RECIPES_DIR = Path(__file__).resolve().parent


def recipe_names() -> list[str]:
    """The names of the shipped recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The YAML file of recipe ``name``; an unknown name is one error listing the known ones."""
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SSKTError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    return path
