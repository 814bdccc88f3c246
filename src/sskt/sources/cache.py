"""Soft-label cache: every source's outputs computed once, stored on disk, read back while training.

Two modes:

* ``exact`` (FKD-style, Shen & Xing 2022): ``views`` (K) augmented views per training image are drawn
  once (crop offset ``dx, dy`` and ``flip``, from a seeded generator). Each source's output on each
  view is stored. While training, each image gets one of its K stored views per epoch; the target is
  shown exactly that view (rebuilt with :func:`~sskt.data.augment.apply_view`) and the source's output
  is read from the file. Consistent with live sources, with K views per image instead of 162.
* ``clean``: one output per image on the un-augmented image; the target still sees random views.
  An approximation (the soft label does not follow the crop and flip).

Storage per view and source: the top-k logits (fp16), their class indices (int16, int32 beyond
32,767 classes) and one fp32 "tail" logit. The tail logit is the constant value that, given to all
C-k remaining classes, gives them together exactly the probability mass they have at the source's
temperature T: ``tail = T * (logsumexp(z_tail / T) - log(C - k))``. So softmax(q/T) of the rebuilt
logits has the exact top-k probabilities and the exact tail mass; only the shape of the distribution
inside the tail is flattened (FKD's "marginal smoothing", but exact at T instead of at T = 1). The
temperature is therefore part of the cache key.

One file per source per dataset::

    header (4 KiB: magic, JSON metadata with the key and its parts, its CRC32)
    chunk table (per chunk of images: CRC32 of its records, done flag)
    records (one per image: K views, K x k values, K x k indices, K tails) -- a numpy memmap
    footer (magic, CRC32 of the chunk table), written last: a file without it is a partial build

A partial build resumes from its done chunks; a file whose header, size, chunk table or any chunk's
CRC is wrong is reported in one line and rebuilt, never used. Checking and building hold an exclusive
lock (``flock`` on a ``.lock`` file next to the cache files), so concurrent runs on the same data --
DDP ranks, parallel seeds -- wait for one builder and then read its files instead of racing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from sskt.data.augment import apply_view, to_float
from sskt.errors import SSKTError
from sskt.sources.bank import SourceBank
from sskt.sources.source import Source

FORMAT_VERSION = 1
MAGIC = b"SSKTSLC1"
FOOTER_MAGIC = b"SSKTEND1"
HEADER_BYTES = 4096
FOOTER_BYTES = 16
MODES = ("exact", "clean")


@dataclass
class CacheSpec:
    """How to cache soft labels (the ``cache:`` mapping of the SSKT method's options).

    ``mode``: ``exact`` (K stored views per image) or ``clean`` (one un-augmented output per image).
    ``views``: K, stored views per image (exact mode; at most (2*padding+1)^2 * (2 if flip) distinct).
    ``topk``: logits kept per view (the rest become one tail value, see the module docstring).
    ``dir``: where the files live (default ``$SSKT_CACHE_DIR/soft-labels``, else ``~/.cache/sskt/soft-labels``).
    ``seed``: seed of the stored views (part of the key). ``chunk``: images per resumable chunk.
    ``batch_size``: views per source forward while building.
    ``verify``: on every open, this many stored (image, view) pairs are compared with the live
    sources (0: off); a disagreement stops the run (a key that missed something would show here).
    """

    mode: str = "exact"
    views: int = 8
    topk: int = 10
    dir: str | None = None
    seed: int = 0
    chunk: int = 512
    batch_size: int = 256
    verify: int = 8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SSKTError(f"cache.mode must be one of {MODES}, got {self.mode!r}")
        if self.views < 1 or self.topk < 1 or self.chunk < 1 or self.batch_size < 1:
            raise SSKTError(f"cache.views, topk, chunk and batch_size must be >= 1, got {self.views}, "
                            f"{self.topk}, {self.chunk}, {self.batch_size}")
        if self.mode == "clean":
            self.views = 1

    @property
    def directory(self) -> Path:
        if self.dir:
            return Path(self.dir).expanduser()
        base = Path(os.environ.get("SSKT_CACHE_DIR", Path.home() / ".cache" / "sskt"))
        return base / "soft-labels"


def cache_spec(raw: Mapping | CacheSpec | None) -> CacheSpec | None:
    """A :class:`CacheSpec` from the YAML mapping (None: no cache), naming unknown keys."""
    if raw is None or isinstance(raw, CacheSpec):
        return raw
    if not isinstance(raw, Mapping):
        raise SSKTError(f"cache must be a mapping such as {{mode: exact, views: 8}}, got {raw!r}")
    known = {f.name for f in fields(CacheSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SSKTError(f"unknown cache option(s) {unknown}; known: {sorted(known)}")
    try:
        return CacheSpec(**raw)
    except TypeError as err:
        raise SSKTError(f"cache: {err}") from None


# ---------------------------------------------------------------------------------------------- keys

def _hash_tensor(h: "hashlib._Hash", t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    h.update(t.numpy().tobytes() if t.numel() else b"")


def dataset_fingerprint(images: Tensor, targets: Tensor) -> str:
    """Hash of the training images and labels (in order: cache rows are positions in the split)."""
    h = hashlib.sha256()
    _hash_tensor(h, images)
    _hash_tensor(h, targets)
    return h.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """Hash of every parameter and buffer (so randomly initialised sources are told apart too)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue  # a counter: does not change outputs
        h.update(name.encode())
        _hash_tensor(h, t)
    return h.hexdigest()


def source_fingerprint(src: Source, precision: str) -> dict:
    """Everything that decides a source's output on a given view."""
    if src.bn_mode != "eval":
        raise SSKTError(f"source {src.name!r} has bn_mode={src.bn_mode!r}: its outputs depend on the batch and "
                        f"can't be cached; use bn_mode: eval or drop method.cache")
    return {
        "weights": weights_digest(src.network), "checkpoint": src.fingerprint,
        "network": type(src.network).__name__, "num_classes": src.num_classes,
        "input_size": src.input_size, "input_scale": src.input_scale,
        "mean": [round(float(v), 8) for v in src.normalize.mean.flatten().tolist()],
        "std": [round(float(v), 8) for v in src.normalize.std.flatten().tolist()],
        "resize": "bilinear,align_corners=False", "frames": src.frames, "precision": precision,
    }


def cache_key(dataset_fp: str, source_fp: dict, spec: CacheSpec, temperature: float, padding: int,
              flip: bool) -> tuple[str, dict]:
    """The key of one source's file and the parts it is made of (stored in the header)."""
    parts = {
        "format": FORMAT_VERSION, "dataset": dataset_fp, "source": source_fp, "mode": spec.mode,
        "views": spec.views, "topk": spec.topk, "view_seed": spec.seed, "padding": padding, "flip": bool(flip),
        "temperature": float(temperature),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), parts


def sample_views(n: int, k: int, padding: int, flip: bool, seed: int, mode: str = "exact") -> Tensor:
    """(n, k, 3) long views ``(dx, dy, flip)``: k distinct views per image, or the identity for clean."""
    if mode == "clean":
        return torch.tensor([padding, padding, 0]).expand(n, 1, 3).clone()
    side = 2 * padding + 1
    total = side * side * (2 if flip else 1)
    if k > total:
        raise SSKTError(f"cache.views={k} but padding {padding} and flip={flip} allow only {total} distinct views")
    g = torch.Generator().manual_seed(seed)
    # Distinct views per image: the first k of a random permutation of all view ids.
    ids = torch.rand(n, total, generator=g).argsort(dim=1)[:, :k]
    return torch.stack([ids % side, (ids // side) % side, ids // (side * side)], dim=-1)


# ---------------------------------------------------------------------------------------------- files

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.close()
        with open(self.path, "wb") as f:
            f.write(self.header_bytes())
            f.write(b"\0" * (self.records_offset - HEADER_BYTES))
            f.truncate(self.size)  # sparse: records are filled chunk by chunk

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


# ---------------------------------------------------------------------------------------------- cache

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


class SoftLabelCache:
    """Every source's stored soft labels for one training set, read by (image index, view).

    Built (or resumed, or checked) by :meth:`open_or_build`; :meth:`lookup` returns per-source (B, C)
    logits on the device asked; :meth:`training_views` gives, in exact mode, the stored view each image
    uses in an epoch.
    """

    def __init__(self, spec: CacheSpec, files: dict[str, CacheFile], views: Tensor, padding: int,
                 build_seconds: float = 0.0, built_views: int = 0) -> None:
        self.spec, self.files, self.views = spec, files, views
        self.padding = padding
        self.build_seconds, self.built_views = build_seconds, built_views
        self._slots: tuple[tuple[int, int], Tensor] | None = None

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def num_images(self) -> int:
        return self.views.shape[0]

    @classmethod
    def open_or_build(cls, bank: SourceBank, images: Tensor, targets: Tensor, spec: CacheSpec,
                      temperatures: Mapping[str, float], padding: int, flip: bool,
                      device: torch.device | str | None = None, progress: bool = True,
                      on_chunk: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None
                      ) -> "SoftLabelCache":
        """Open every source's file, building or finishing whatever is missing, stale or damaged.

        ``images`` (N,C,H,W) uint8 and ``targets`` are the training split (row i = dataset index i).
        ``on_chunk(c)`` is called after each chunk is written (tests use it to interrupt a build).
        """
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise SSKTError("the soft-label cache needs (N,C,H,W) uint8 training images (video is not supported)")
        device = torch.device(device) if device is not None else _default_device()
        n = images.shape[0]
        data_fp = dataset_fingerprint(images, targets)
        views = sample_views(n, spec.views, padding, flip, spec.seed, spec.mode)
        with build_lock(spec.directory / f".{data_fp[:10]}-{spec.mode}.lock", log):
            files: dict[str, CacheFile] = {}
            todo: dict[str, set[int]] = {}
            for src in bank.sources:
                key, parts = cache_key(data_fp, source_fingerprint(src, bank.resolved_precision(src, device)), spec,
                                       temperatures[src.name],
                                       padding, flip)
                meta = {"key": key, "parts": parts, "n": n, "views": spec.views, "topk": min(spec.topk, src.num_classes),
                        "num_classes": src.num_classes, "chunk": spec.chunk, "source_name": src.name}
                path = spec.directory / f"{src.name}-{spec.mode}-{data_fp[:10]}-{key[:16]}.sskc"
                f = CacheFile(path, meta)
                files[src.name] = f
                todo[src.name] = set(range(f.n_chunks))
                if path.exists():
                    try:
                        table, complete = f.check()
                        todo[src.name] = {c for c in range(f.n_chunks) if not table[c, 1]}
                        if todo[src.name]:
                            log(f"sskt: resuming soft-label cache {path.name}: {f.n_chunks - len(todo[src.name])}/"
                                f"{f.n_chunks} chunks done")
                    except (CorruptCache, OSError, ValueError) as err:
                        log(f"sskt: soft-label cache {path} is damaged ({err}); rebuilding it")
                        f.create()
                else:
                    f.create()
            started = time.perf_counter()
            built = cls._fill(bank, images, views, files, todo, temperatures, spec, padding, device, progress, on_chunk)
            seconds = time.perf_counter() - started if built else 0.0
            for name, f in files.items():
                if todo[name]:
                    f.finish()
            # Check what was just written as strictly as an old file: never train from an unchecked cache.
            for f in files.values():
                try:
                    f.check()
                except CorruptCache as err:
                    raise SSKTError(f"soft-label cache {f.path} failed its check right after building ({err})") from None
        cache = cls(spec, files, views, padding, seconds, built)
        if spec.verify:
            cache.verify_against(bank, images, spec.verify, device)
        return cache

    def verify_against(self, bank: SourceBank, images: Tensor, count: int, device: torch.device) -> None:
        """Compare ``count`` random stored (image, view) soft labels with the live sources."""
        g = torch.Generator().manual_seed(12345)
        index = torch.randint(0, self.num_images, (min(count, self.num_images),), generator=g)
        view = self.views[index, torch.randint(0, self.views.shape[1], (len(index),), generator=g)]
        was_training = bank.training
        bank.eval()
        try:
            live = bank(to_float(apply_view(images[index], view, self.padding)).to(device))
        finally:
            bank.train(was_training)
        stored = self.lookup(index, view, device="cpu")
        for name, f in self.files.items():
            z, q = live[name].float().cpu(), stored[name]
            idx = z.topk(1, dim=1).indices
            top = q.topk(f.meta["topk"], dim=1).indices
            # Compare the stored top-k logits with the live ones (bf16 and fp16 round at ~0.4% of the
            # logits' scale), and the live top-1 class must be among the stored top-k.
            diff = (q.gather(1, top) - z.gather(1, top)).abs().mean()
            scale = z.gather(1, top).abs().mean() + 1.0
            if float(diff / scale) > 0.02 or not bool((top == idx).any(1).float().mean() >= 0.75):
                raise SSKTError(f"soft-label cache {f.path} disagrees with the live source {name!r} "
                                f"(mean |stored - live| {float(diff):.3g}); delete it and report a bug in the cache key")

    @staticmethod
    def _fill(bank: SourceBank, images: Tensor, views: Tensor, files: dict[str, CacheFile],
              todo: dict[str, set[int]], temperatures: Mapping[str, float], spec: CacheSpec, padding: int,
              device: torch.device, progress: bool, on_chunk: Callable[[int], None] | None) -> int:
        chunks = sorted(set().union(*todo.values()))
        if not chunks:
            return 0
        first = next(iter(files.values()))
        total = sum(first.chunk_rows(c)[1] - first.chunk_rows(c)[0] for c in chunks) * spec.views
        bar = _progress(total, progress, f"soft-label cache ({spec.mode}, {len(files)} source(s))")
        was_training = bank.training
        moved = {s.name: next(s.parameters()).device for s in bank.sources if any(True for _ in s.parameters())}
        bank.to(device).eval()
        done_views = 0
        try:
            for c in chunks:
                need = [s for s in bank.sources if c in todo[s.name]]
                sub = SourceBank(need, bank.precision) if len(need) < len(bank.sources) else bank
                a, b = first.chunk_rows(c)
                v = views[a:b].reshape(-1, 3)
                x = images[a:b].repeat_interleave(spec.views, dim=0)
                parts: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {s.name: [] for s in need}
                for s0 in range(0, x.shape[0], spec.batch_size):
                    xb = to_float(apply_view(x[s0:s0 + spec.batch_size], v[s0:s0 + spec.batch_size], padding))
                    out = sub(xb.to(device))
                    for s in need:
                        parts[s.name].append(compress_logits(out[s.name].cpu(), spec.topk, temperatures[s.name]))
                    bar.update(xb.shape[0])
                    done_views += xb.shape[0]
                shape = (b - a, spec.views)
                for s in need:
                    val, idx, tail = (torch.cat(p) for p in zip(*parts[s.name]))
                    files[s.name].write_chunk(
                        c, views[a:b].numpy().astype(np.int8), val.reshape(*shape, -1).half().numpy(),
                        idx.reshape(*shape, -1).numpy().astype(files[s.name].dtype["idx"].base),
                        tail.reshape(shape).numpy().astype(np.float32))
                if on_chunk is not None:
                    on_chunk(c)
        finally:
            bar.close()
            for s in bank.sources:
                if s.name in moved:
                    s.to(moved[s.name])
            bank.train(was_training)
        return done_views

    # -- reading
    def training_views(self, index: Tensor, epoch: int, seed: int = 0) -> Tensor:
        """(B, 3) views for these images this epoch: one of each image's K stored views, drawn per epoch."""
        if self._slots is None or self._slots[0] != (epoch, seed):
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + 17)
            self._slots = ((epoch, seed), torch.randint(0, self.views.shape[1], (self.num_images,), generator=g))
        index = index.cpu().long()
        return self.views[index, self._slots[1][index]]

    def lookup(self, index: Tensor, view: Tensor | None = None, device: torch.device | str | None = None
               ) -> dict[str, Tensor]:
        """Per-source (B, C) float32 logits for images ``index`` seen through ``view`` (exact mode)."""
        device = device if device is not None else index.device
        index = index.cpu().long()
        if self.mode == "clean":
            slot = torch.zeros_like(index)
        else:
            if view is None:
                raise SSKTError("the exact soft-label cache needs the batch's views (batch['view'])")
            match = (self.views[index] == view.cpu().long()[:, None, :]).all(-1)
            if not bool(match.any(1).all()):
                raise SSKTError("a training view is not among the cached ones: with an exact cache the target "
                                "must be shown the views given by SSKT.training_views")
            slot = match.int().argmax(1)
        rows = index.numpy()
        rank = np.arange(len(rows))
        out = {}
        for name, f in self.files.items():
            rec = f.records()[rows]  # one gather from the memmap per source
            s = slot.numpy()
            val = torch.from_numpy(rec["val"][rank, s].astype(np.float32))
            idx = torch.from_numpy(rec["idx"][rank, s].astype(np.int64))
            tail = torch.from_numpy(rec["tail"][rank, s])
            out[name] = expand_logits(val, idx, tail, f.meta["num_classes"]).to(device)
        return out

    # -- reporting
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def report(self) -> list[str]:
        n = self.num_images
        lines = [f"{name}: {f.path}  {f.size / 1e6:.2f} MB  ({f.size / n:.0f} bytes/image, {f.meta['views']} "
                 f"view(s) x top-{f.meta['topk']} of {f.meta['num_classes']})" for name, f in self.files.items()]
        lines.append(f"total {self.total_bytes() / 1e6:.2f} MB for {n} images ({self.total_bytes() / n:.0f} bytes/image)"
                     + (f"; built {self.built_views} views/source in {self.build_seconds:.1f}s" if self.built_views
                        else "; nothing to build"))
        return lines


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="view", file=sys.stderr, dynamic_ncols=True)


def topk_kl(logits: Tensor, k: int, temperature: float) -> dict[str, float]:
    """Mean KL(full || approx) at ``temperature`` for ways to keep only the top-k logits: ``tail`` (this
    cache) and ``marginal`` (FKD: T = 1 probabilities with the tail mass spread uniformly, sharpened or
    softened to T afterwards); for ``renorm`` (top-k renormalised, tail 0) the probability mass it drops."""
    logits = logits.float()
    p = torch.softmax(logits / temperature, dim=1)
    log_p = p.clamp_min(1e-30).log()
    val, idx, tail = compress_logits(logits, k, temperature)
    approx = torch.log_softmax(expand_logits(val, idx, tail, logits.shape[1]) / temperature, dim=1)
    result = {"tail": float((p * (log_p - approx)).sum(1).mean())}
    # FKD stores softmax probabilities at T = 1; applying T afterwards means p^(1/T) renormalised.
    p1 = torch.softmax(logits, dim=1)
    top = p1.gather(1, idx)
    c = logits.shape[1]
    k = idx.shape[1]
    rest = ((1 - top.sum(1, keepdim=True)).clamp_min(0) / max(c - k, 1)).expand(-1, c).clone()
    q = rest.scatter(1, idx, top).clamp_min(1e-30) ** (1 / temperature)
    q = q / q.sum(1, keepdim=True)
    result["marginal"] = float((p * (log_p - q.log())).sum(1).mean())
    # renorm (top-k renormalised) puts zero mass on the tail, so KL(full || renorm) is infinite: report
    # the mass it drops instead.
    result["renorm_dropped_mass"] = float(1 - p.gather(1, idx).sum(1).mean())
    return result
