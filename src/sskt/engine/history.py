"""A run's per-epoch history and its ``result.json``, in the one convention a reader sees.

The convention (``RESULT_FORMAT``): accuracies and mAP in percent; epochs counted from 1 (``history[].epoch``,
``best_epoch``); percentages and losses rounded to 4 decimals, seconds to 2, a method's other numbers to 4
decimals (4 significant digits below 1, so a weight decay of 1e-05 stays 1e-05). The run's config is never
rounded.

The engine's own history (``MethodModule.history``, also inside checkpoints, which must resume bit for bit)
counts epochs from 0 at full precision, as ``result.json`` did before it had a ``format`` key:
:func:`reader_record` turns either into the convention and :func:`read_result` is how every reader (``sskt
compare``, ``sskt distill``, the benchmarks) opens a ``result.json``, old or new.
"""
from __future__ import annotations

import json
import os
from typing import Any

from sskt.errors import SSKTError

RESULT_FORMAT = "sskt-result-v2"
DECIMALS = 4  # percentages and losses
SECONDS_DECIMALS = 2

# Keys of result.json that are never rounded (the config as given, names, versions) or are counts.
_KEPT = {"config", "versions", "name", "seed", "metric", "resumed_from", "machine", "format"}
_SCORES = {"final", "best", "best_val", "final_macro_acc"}


def best_by_validation(history: list[dict], metric: str) -> dict[str, Any]:
    """``best``: the test metric at the evaluation with the best validation metric (None without a
    validation split: picking the best test score would select on the test split), with its epoch as
    ``history`` counts it. Pick it on the engine's full-precision history: rounding could make a tie."""
    key = f"val_{metric}"
    scored = [h for h in history if key in h]
    if not scored:
        return {"best": None, "best_epoch": None, "best_val": None}
    top = max(scored, key=lambda h: h[key])  # the earliest of equal scores
    return {"best": top[f"test_{metric}"], "best_epoch": top["epoch"], "best_val": top[key]}


def _round(key: str, value: Any) -> Any:
    """``value`` as shown: seconds to 2 decimals, other floats to 4 (booleans, ints, strings unchanged)."""
    if not isinstance(value, float):
        return value
    return round(value, SECONDS_DECIMALS if "seconds" in key else DECIMALS)


def _tidy(value: Any) -> Any:
    """A method's extra numbers, at any depth: 4 decimals, or 4 significant digits below 1."""
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tidy(v) for v in value]
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return float(f"{value:.4g}") if abs(value) < 1 else round(value, DECIMALS)
    return value


def reader_history(history: list[dict]) -> list[dict]:
    """The engine's history (epochs from 0, full precision) as a reader sees it: epochs from 1, rounded."""
    return [{k: int(v) + 1 if k == "epoch" else _round(k, v) for k, v in h.items()} for h in history]


def reader_record(record: dict) -> dict:
    """A result record in the engine's convention (what ``fit`` builds; a ``result.json`` without ``format``)
    in the reader's: epochs from 1, numbers rounded, ``format`` set. The config is left as it is."""
    out: dict[str, Any] = {"format": RESULT_FORMAT}
    for key, value in record.items():
        if key == "history":
            out[key] = reader_history(list(value or []))
        elif key == "best_epoch":
            out[key] = None if value is None else int(value) + 1
        elif key in _KEPT or key.endswith("_images"):
            out[key] = value
        elif key in _SCORES or "seconds" in key:
            out[key] = _round(key, value)
        else:
            out[key] = _tidy(value)
    out["format"] = RESULT_FORMAT
    return out


def read_result(source: str | os.PathLike | dict) -> dict:
    """A ``result.json`` (a path, or its parsed mapping) in the reader's convention, whichever sskt wrote it:
    a record without ``format`` (epochs from 0, unrounded) is converted, a ``sskt-result-v2`` one is kept."""
    if isinstance(source, dict):
        record, where = source, "result record"
    else:
        where = os.fspath(source)
        try:
            with open(where, encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError) as err:
            raise SSKTError(f"cannot read {where}: {getattr(err, 'strerror', None) or err}") from None
        if not isinstance(record, dict):
            raise SSKTError(f"{where} is not a result record (expected a JSON object)")
    fmt = record.get("format")
    if fmt is None:
        return reader_record(record)
    if fmt == RESULT_FORMAT:
        return dict(record)
    raise SSKTError(f"{where} has format {fmt!r}, which this sskt cannot read (it reads {RESULT_FORMAT}); "
                    f"upgrade sskt")
