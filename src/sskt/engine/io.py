"""File writing that never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic_write(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    return _atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_json_dump(obj: Any, path: str | os.PathLike) -> Path:
    """json.dump (indented, sorted keys) written atomically."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_text_write(text: str, path: str | os.PathLike) -> Path:
    """A text file (UTF-8) written atomically."""
    data = text.encode()
    return _atomic_write(path, lambda fh: fh.write(data))
