"""A run directory remembers the config that made it: a rerun resumes only the same experiment.

``fit`` calls :func:`prepare_run_dir` before any data is decoded. It refuses an ``out_dir`` that cannot
be written, and a rerun whose config differs from the run already there in a key that changes what is
trained (naming the keys); the keys of :data:`CONTINUABLE` (more epochs, how often to evaluate, devices,
logging) may change on purpose, and the change is reported. ``train.resume=false`` starts over.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sskt.config import ExperimentConfig
from sskt.errors import SSKTError
from sskt.io import atomic_text_write

# Keys that change how a run is shown or stored, never what it computes.
COSMETIC = frozenset({
    "name", "out_dir", "train.progress_bar", "train.log_every_n_steps", "train.tensorboard", "train.loggers",
    "train.resume", "train.checkpoint_every", "train.eval_batch_size", "data.num_workers",
})
# Keys a resumed run may also change on purpose: how long it goes, how often it is scored, on which devices.
# (More epochs under a cosine schedule stretch the rest of the schedule from where the run is.)
CONTINUABLE = COSMETIC | {"train.epochs", "train.eval_every", "train.accelerator", "train.devices",
                          "train.strategy", "train.num_nodes"}
CONFIG_FILE = "config.yaml"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config (list items by index).

    Example:
        >>> flatten({"a": {"b": 1, "c": [{"d": 2}]}})
        {'a.b': 1, 'a.c.0.d': 2}
    """
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every key whose value differs (missing = None)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _checkpoint_config(path: Path) -> dict | None:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable checkpoint: Lightning's resume will say so
        return None
    return ckpt.get("sskt_config") if isinstance(ckpt, dict) else None


def _stored_config(out_dir: Path) -> tuple[dict | None, str]:
    """The config of the run already in ``out_dir`` (its checkpoint's own first), and where it was read."""
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        found = _checkpoint_config(ckpt)
        if found is not None:
            return found, str(ckpt)
    result = out_dir / "result.json"
    if result.is_file():
        try:
            return json.loads(result.read_text()).get("config"), str(result)
        except (OSError, ValueError):
            return None, ""
    return None, ""


def normalised(raw: dict) -> dict:
    """A stored config with today's defaults filled in (so a key added since is not a change)."""
    try:
        return ExperimentConfig.from_dict(raw).to_dict()
    except SSKTError:
        return raw


def check_writable(out_dir: Path) -> None:
    """One line when ``out_dir`` cannot hold the run (a file in the way, no permission, read-only mount)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".sskt-write-test-"):
            pass
    except FileExistsError:
        raise SSKTError(f"out_dir {out_dir} is a file, not a folder; choose another out_dir") from None
    except NotADirectoryError:
        raise SSKTError(f"out_dir {out_dir} lies under a file, not a folder; choose another out_dir") from None
    except OSError as err:
        raise SSKTError(f"cannot write in out_dir {out_dir}: {err.strerror or err}; choose another out_dir") from None


def prepare_run_dir(config: dict, out_dir: Path, resume: bool) -> str | None:
    """Check ``out_dir`` against ``config`` and record the config there; returns a line to show, if any.

    Refuses (SSKTError) a folder that cannot be written and, when resuming, a run there of another config.
    With ``resume`` False a previous run's checkpoint and results are removed first (start over).
    """
    check_writable(out_dir)
    note = None
    stored, where = _stored_config(out_dir)
    if not resume:
        removed = [p for p in (out_dir / "checkpoints" / "last.ckpt", out_dir / "result.json", out_dir / "target.pt")
                   if p.is_file()]
        for path in removed:
            path.unlink()
        if removed:
            note = f"train.resume=false: starting over in {out_dir} (its previous checkpoint and results removed)"
    elif stored is not None:
        changes = config_changes(normalised(stored), config)
        blocking = {k: v for k, v in changes.items() if k not in CONTINUABLE}
        if blocking:
            shown = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in list(blocking.items())[:6])
            more = f" (and {len(blocking) - 6} more)" if len(blocking) > 6 else ""
            raise SSKTError(f"{out_dir} holds a run of another config ({shown}{more}, from {where}); use a new "
                            f"out_dir, or add train.resume=false to start over (its checkpoint is removed)")
        continued = {k: v for k, v in changes.items() if k not in ("out_dir", "name", "train.resume")}
        if continued:
            note = "continuing the run in {} with changed {}".format(
                out_dir, ", ".join(f"{k} ({_show(a)} -> {_show(b)})" for k, (a, b) in continued.items()))
    atomic_text_write(yaml.safe_dump(config, sort_keys=False), out_dir / CONFIG_FILE)
    return note


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value) if isinstance(value, str) else str(value)


def announce(note: str | None) -> None:
    if note:
        print(f"sskt: {note}", file=sys.stderr, flush=True)


