"""File writing that never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    """The process's umask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status") as fh:  # Linux: no window in which the umask is 0 for other threads
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Write through ``write(fh)`` to a temporary file beside ``path``, then rename it over ``path``:
    readers see the old file or the new one, never half of one. The file gets the permissions a plain
    ``open`` would give it (0o666 less the umask; ``mkstemp`` alone would make it 0o600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_json_dump(obj: Any, path: str | os.PathLike) -> Path:
    """json.dump (indented, sorted keys) written atomically."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_text_write(text: str, path: str | os.PathLike) -> Path:
    """A text file (UTF-8) written atomically."""
    data = text.encode()
    return atomic_write(path, lambda fh: fh.write(data))
