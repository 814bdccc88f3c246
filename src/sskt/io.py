"""File writing that never leaves a half-written file behind, and one error for a full disk.

Every file sskt writes goes through :func:`atomic_write` (or its helpers): it writes a temporary file
beside the target, reserves the bytes first where their number is known (``os.posix_fallocate``), and
renames it over the target. On a full disk, an exceeded quota or a read-only filesystem the temporary
file is removed, the previous file stays as it was, and one :class:`DiskFullError` (an
:class:`~sskt.errors.SSKTError`) names the path and the space needed. :func:`disk_full_error` finds
such an error anywhere in an exception's chain (torch's writer, for one, wraps it in a RuntimeError),
so the CLI can report files that libraries write themselves the same way.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Union

import torch

from sskt.errors import SSKTError

# The errors that mean "this filesystem takes no more bytes", whatever is being written.
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# posix_fallocate on a filesystem that cannot reserve space: the write goes ahead unreserved.
_NO_FALLOCATE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})
DEFAULT_ELSEWHERE = "choose another out_dir, then run the same command again to resume"

Writer = Union[Callable[[BinaryIO], Any], bytes, bytearray, memoryview]


class DiskFullError(SSKTError):
    """A write refused by the filesystem (full, over quota, read-only); the message names the path,
    the space needed where known, and the fix."""

    def __init__(self, message: str, path: Path | None = None, needed: int | None = None) -> None:
        super().__init__(message)
        self.path, self.needed = path, needed


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, then every exception behind it (``__cause__`` and ``__context__``), each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__context__, e.__cause__]


def disk_full_error(exc: BaseException | None) -> OSError | None:
    """The OSError with errno ENOSPC, EDQUOT or EROFS in ``exc`` or its chain (``__cause__`` and
    ``__context__``, e.g. the one behind torch's "unexpected pos" RuntimeError), else None."""
    return next((e for e in exception_chain(exc) if isinstance(e, OSError) and e.errno in FULL_DISK_ERRNOS), None)


def disk_full_report(exc: BaseException | None) -> str | None:
    """The one line to show for a full disk behind ``exc``, else None. A :class:`DiskFullError` in the
    chain wins (it names the file and the size): a library writing its own files while the run stops,
    such as Lightning's CSV logger, may fail on the same full disk and raise over it."""
    ours = next((e for e in exception_chain(exc) if isinstance(e, DiskFullError)), None)
    if ours is not None:
        return str(ours)
    full = disk_full_error(exc)
    return disk_full_message(full) if full is not None else None


def human_size(n: int) -> str:
    """``n`` bytes in the unit a person reads (decimal: 3.1 MB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def disk_full_message(err: OSError, path: str | os.PathLike | None = None, needed: int | None = None,
                      elsewhere: str = DEFAULT_ELSEWHERE) -> str:
    """One line for a write refused with ``err``: the file, the OS's reason, the space needed (where known)
    and free, and the fix; ``elsewhere`` is the other way out (``choose another out_dir, then ...``)."""
    path = path if path is not None else err.filename
    what = f"cannot write {path}" if path else "a write failed"
    if err.errno == errno.EROFS:
        return f"{what}: Read-only file system; {elsewhere}"
    sizes = [f"about {human_size(needed)} needed"] if needed else []
    free = _free_bytes(path) if path else None
    if free is not None:
        sizes.append(f"{human_size(free)} free")
    size = f" ({', '.join(sizes)})" if sizes else ""
    if err.errno == errno.EDQUOT:
        return f"{what}: Disk quota exceeded{size}; free space within the quota or {elsewhere}"
    # The OS's own words, as `df`/`cp` users know them (not os.strerror: that may be translated)
    return f"{what}: No space left on device{size}; free space or {elsewhere}"


def _raise_if_full(exc: BaseException, path: Path, needed: int | None, elsewhere: str) -> None:
    """Raise DiskFullError for ``path`` when a full disk is behind ``exc``; return otherwise."""
    full = None if isinstance(exc, DiskFullError) else disk_full_error(exc)
    if full is not None:
        raise DiskFullError(disk_full_message(full, path, needed, elsewhere), path, needed) from exc


def _free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the filesystem holding ``path`` (its nearest existing folder), None if unknown."""
    p = Path(path)
    for folder in (p, *p.parents):
        if folder.is_dir():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def reserve(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of the open file ``fd`` on disk (``os.posix_fallocate``), so that a full
    disk fails here rather than half-way through a write or as a SIGBUS in a memory map. Silently does
    nothing where the OS or filesystem cannot reserve space; raises the OSError of a full disk."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in _NO_FALLOCATE:
            raise


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


def atomic_write(path: str | os.PathLike, write: Writer, *, size: int | None = None,
                 elsewhere: str = DEFAULT_ELSEWHERE) -> Path:
    """Write ``write`` (bytes, or a function called with the open binary file) to a temporary file
    beside ``path``, then rename it over ``path``: readers see the old file or the new one, never half
    of one. The file gets the permissions a plain ``open`` would give it (0o666 less the umask;
    ``mkstemp`` alone would make it 0o600).

    The bytes are reserved before writing when their number is known: always for bytes, and from
    ``size`` for a function (an upper bound of what it writes, sequentially; the file is cut to what was
    written). A full disk, exceeded quota or read-only filesystem removes the temporary file, leaves
    ``path`` as it was and raises :class:`DiskFullError`; ``elsewhere`` completes its fix.

    Example:
        >>> import tempfile
        >>> p = atomic_write(Path(tempfile.mkdtemp()) / "a.txt", b"hello")
        >>> p.read_bytes()
        b'hello'
    """
    path = Path(path)
    data = None if callable(write) else memoryview(write).cast("B")
    needed = data.nbytes if data is not None else size
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            if needed:
                reserve(fh.fileno(), needed)
            if data is not None:
                fh.write(data)
            else:
                write(fh)
                if size:  # the reservation may exceed what was written: no trailing zeros
                    fh.truncate(fh.tell())
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:  # already gone, or cannot be removed: nothing more to do
                pass
        _raise_if_full(exc, path, needed, elsewhere)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike, *, elsewhere: str = DEFAULT_ELSEWHERE) -> Path:
    """torch.save, serialised in memory first (so its size is reserved on disk before writing), then
    written atomically by :func:`atomic_write`."""
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
    except Exception as exc:  # torch's writer reports a failed write as a RuntimeError chained from it
        _raise_if_full(exc, Path(path), None, elsewhere)
        raise
    return atomic_write(path, buf.getbuffer(), elsewhere=elsewhere)


def atomic_json_dump(obj: Any, path: str | os.PathLike, *, elsewhere: str = DEFAULT_ELSEWHERE) -> Path:
    """json.dump (indented, sorted keys) written atomically."""
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    return atomic_write(path, data, elsewhere=elsewhere)


def atomic_text_write(text: str, path: str | os.PathLike, *, elsewhere: str = DEFAULT_ELSEWHERE) -> Path:
    """A text file (UTF-8) written atomically."""
    return atomic_write(path, text.encode(), elsewhere=elsewhere)
