"""The soft-label cache's file format: a header with the key, a chunk table with CRCs, memory-mapped
records, a footer written last (layout in :mod:`sskt.sources.cache`); the top-k + tail encoding of
logits; and the lock that lets one process build while others wait."""
from __future__ import annotations

import json
import math
import struct
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from sskt.errors import SSKTError
from sskt.io import DiskFullError, disk_full_error, disk_full_message, reserve

FORMAT_VERSION = 1
MAGIC = b"SSKTSLC1"
FOOTER_MAGIC = b"SSKTEND1"
HEADER_BYTES = 4096
FOOTER_BYTES = 16
# The fix named when the disk cannot hold a cache file.
CACHE_ELSEWHERE = ("set method.cache.dir to a folder with room (or drop method.cache: live sources need no disk), "
                   "then run the same command again")


class CorruptCache(Exception):
    """A cache file that must not be used (the message says why)."""


class CacheFile:
    """One source's memory-mapped cache file (layout in the module docstring)."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.meta = path, meta
        n, k, top = meta["n"], meta["views"], meta["topk"]
        idx_type = "<i2" if meta["num_classes"] <= 32767 else "<i4"
        self.dtype = np.dtype([("view", "i1", (k, 3)), ("val", "<f2", (k, top)), ("idx", idx_type, (k, top)),
                               ("tail", "<f4", (k,))])
        self.n_chunks = math.ceil(n / meta["chunk"])
        self.table_offset = HEADER_BYTES
        self.records_offset = HEADER_BYTES + _round_up(8 * self.n_chunks, 64)
        self.footer_offset = self.records_offset + n * self.dtype.itemsize
        self.size = self.footer_offset + FOOTER_BYTES
        self._records: np.memmap | None = None

    # -- layout helpers
    def header_bytes(self) -> bytes:
        body = json.dumps(self.meta, sort_keys=True).encode()
        head = MAGIC + struct.pack("<II", len(body), zlib.crc32(body)) + body
        if len(head) > HEADER_BYTES:
            raise SSKTError(f"cache header too large ({len(head)} bytes)")
        return head.ljust(HEADER_BYTES, b"\0")

    def chunk_rows(self, c: int) -> tuple[int, int]:
        step = self.meta["chunk"]
        return c * step, min(self.meta["n"], (c + 1) * step)

    def records(self, writable: bool = False) -> np.memmap:
        if self._records is None or (writable and not self._records.flags.writeable):
            if writable:  # a file resumed from an older, sparse build gets its holes reserved too
                with open(self.path, "r+b") as f:
                    try:
                        reserve(f.fileno(), self.size)
                    except OSError as err:
                        full = disk_full_error(err)
                        if full is None:
                            raise
                        raise self._full(full) from err
            self._records = np.memmap(self.path, dtype=self.dtype, mode="r+" if writable else "r",
                                      offset=self.records_offset, shape=(self.meta["n"],))
        return self._records

    def close(self) -> None:
        self._records = None

    def read_table(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.table_offset)
            raw = f.read(8 * self.n_chunks)
        if len(raw) != 8 * self.n_chunks:
            raise CorruptCache("chunk table truncated")
        return np.frombuffer(raw, dtype="<u4").reshape(self.n_chunks, 2).copy()

    def chunk_crc(self, c: int) -> int:
        a, b = self.chunk_rows(c)
        return zlib.crc32(np.ascontiguousarray(self.records()[a:b]).tobytes())

    # -- lifecycle
    def create(self) -> None:
        """A new file of the full size: header, empty chunk table, zeroed records and footer.

        The whole size is reserved on disk before the records are mapped (``posix_fallocate``): a full
        disk is one error here, never a SIGBUS when a mapped page is first written. Where the filesystem
        cannot reserve space the file stays sparse, as before."""
        self.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as f:
                reserve(f.fileno(), self.size)
                f.write(self.header_bytes())
                f.write(b"\0" * (self.records_offset - HEADER_BYTES))
                f.truncate(self.size)  # records are filled chunk by chunk
        except OSError as err:
            full = disk_full_error(err)
            if full is None:
                raise
            try:
                self.path.unlink(missing_ok=True)  # no file that a later run would take for a resumable build
            except OSError:
                pass  # a read-only filesystem: nothing was written to it either
            raise self._full(full) from err

    def _full(self, err: OSError) -> DiskFullError:
        """The one error for a disk that cannot hold this file."""
        return DiskFullError(disk_full_message(err, self.path, self.size, CACHE_ELSEWHERE), self.path, self.size)

    def check(self) -> tuple[np.ndarray, bool]:
        """(chunk table, complete?) of a file on disk; raises CorruptCache with the reason."""
        actual = self.path.stat().st_size
        if actual != self.size:
            raise CorruptCache(f"size {actual} bytes, expected {self.size} (truncated or from another build)")
        with open(self.path, "rb") as f:
            head = f.read(HEADER_BYTES)
            f.seek(self.footer_offset)
            foot = f.read(FOOTER_BYTES)
        if head[:8] != MAGIC:
            raise CorruptCache("bad magic number in the header")
        length, crc = struct.unpack("<II", head[8:16])
        body = head[16:16 + length]
        if zlib.crc32(body) != crc:
            raise CorruptCache("header checksum mismatch")
        if json.loads(body) != self.meta:
            raise CorruptCache("header does not match the expected key")
        table = self.read_table()
        complete = foot[:8] == FOOTER_MAGIC
        if complete:
            crc_table, n_chunks = struct.unpack("<II", foot[8:16])
            if n_chunks != self.n_chunks or zlib.crc32(table.tobytes()) != crc_table:
                raise CorruptCache("chunk table checksum mismatch")
            if not table[:, 1].all():
                raise CorruptCache("footer present but chunks missing")
        elif foot.strip(b"\0"):
            raise CorruptCache("damaged footer")
        for c in np.flatnonzero(table[:, 1]):
            if self.chunk_crc(int(c)) != int(table[c, 0]):
                raise CorruptCache(f"checksum mismatch in chunk {int(c)} of {self.n_chunks}")
        return table, complete

    def write_chunk(self, c: int, views: np.ndarray, val: np.ndarray, idx: np.ndarray, tail: np.ndarray) -> None:
        a, b = self.chunk_rows(c)
        rec = self.records(writable=True)
        rec["view"][a:b] = views
        rec["val"][a:b] = val
        rec["idx"][a:b] = idx
        rec["tail"][a:b] = tail
        rec.flush()
        crc = zlib.crc32(np.ascontiguousarray(rec[a:b]).tobytes())
        # The done flag is written after the records are on disk: a crash in between redoes the chunk.
        with open(self.path, "r+b") as f:
            f.seek(self.table_offset + 8 * c)
            f.write(struct.pack("<II", crc, 1))

    def finish(self) -> None:
        table = self.read_table()
        with open(self.path, "r+b") as f:
            f.seek(self.footer_offset)
            f.write(FOOTER_MAGIC + struct.pack("<II", zlib.crc32(table.tobytes()), self.n_chunks))
        self.close()


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def compress_logits(logits: Tensor, k: int, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(top-k values, their indices, tail logit) of (B, C) logits; see the module docstring."""
    logits = logits.float()
    c = logits.shape[1]
    k = min(k, c)
    val, idx = logits.topk(k, dim=1)
    if k == c:
        tail = torch.full((logits.shape[0],), -math.inf)
    else:
        scaled = (logits / temperature).scatter(1, idx, -math.inf)
        tail = temperature * (torch.logsumexp(scaled, dim=1) - math.log(c - k))
    return val, idx, tail


def expand_logits(val: Tensor, idx: Tensor, tail: Tensor, num_classes: int) -> Tensor:
    """(B, C) float32 logits with the stored top-k in place and the tail logit everywhere else."""
    out = tail.float()[:, None].expand(-1, num_classes).clone()
    return out.scatter_(1, idx.long(), val.float())


@contextmanager
def build_lock(path: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Exclusive lock on ``path`` for the duration of the block; says once that it waits if another
    process holds it. No-op where ``fcntl`` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"sskt: another process is building this soft-label cache; waiting for it ({path})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
