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
temperature is therefore part of the cache key. A source that outputs its embedding (``adapt: features``)
keeps all of its features (k = D, no tail).

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

import sys
import time
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from sskt.data.augment import apply_view, to_float
from sskt.errors import SSKTError
from sskt.progress import Progress
from sskt.sources.bank import SourceBank
from sskt.sources.cache_file import CacheFile, CorruptCache, build_lock, compress_logits, expand_logits
from sskt.sources.cache_keys import CacheSpec, cache_key, dataset_fingerprint, sample_views, source_fingerprint
from sskt.sources.source import Source


class SoftLabelCache:
    """Every source's stored soft labels for one training set, read by (image index, view).

    Built (or resumed, or checked) by :meth:`open_or_build`. While training (through
    :class:`~sskt.data.views.TrainingViews`), :meth:`stored_views` gives, in exact mode, the stored view
    each image is shown in an epoch and its slot, and :meth:`soft_labels` reads the per-source (B, C)
    logits of that slot.
    """

    def __init__(self, spec: CacheSpec, files: dict[str, CacheFile], views: Tensor, padding: int,
                 build_seconds: float = 0.0, built_views: int = 0) -> None:
        self.spec, self.files, self.views = spec, files, views
        self.padding = padding
        self.build_seconds, self.built_views = build_seconds, built_views
        self._slots: tuple[tuple[int, int], Tensor] | None = None
        self._first_slot: Tensor | None = None

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
                meta = {"key": key, "parts": parts, "n": n, "views": spec.views, "topk": stored_k(src, spec),
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
        step = spec.batch_size or (256 if torch.device(device).type == "cuda" else 32)
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
                for s0 in range(0, x.shape[0], step):
                    xb = to_float(apply_view(x[s0:s0 + step], v[s0:s0 + step], padding))
                    out = sub(xb.to(device))
                    for s in need:
                        parts[s.name].append(compress_logits(out[s.name].cpu(), stored_k(s, spec), temperatures[s.name]))
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
    def stored_views(self, index: Tensor, epoch: int, seed: int = 0) -> tuple[Tensor, Tensor] | None:
        """Exact mode: the (B, 3) view each of these images is shown this epoch (one of its K stored views,
        drawn per epoch and seed) and the (B,) slot its soft labels are stored in; None in clean mode (the
        target sees fresh random views). The :class:`~sskt.data.views.SoftLabelStore` protocol."""
        if self.mode != "exact":
            return None
        if self._slots is None or self._slots[0] != (epoch, seed):
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + 17)
            self._slots = ((epoch, seed), torch.randint(0, self.views.shape[1], (self.num_images,), generator=g))
        index = index.cpu().long()
        slot = self._slots[1][index]
        # An image may have drawn the same view twice: read the first slot holding it, as lookup() does.
        return self.views[index, slot], self._first_slot_of_view()[index, slot]

    def training_views(self, index: Tensor, epoch: int, seed: int = 0) -> Tensor:
        """(B, 3) views for these images this epoch (exact mode): :meth:`stored_views` without the slots."""
        drawn = self.stored_views(index, epoch, seed)
        if drawn is None:
            raise SSKTError("a clean soft-label cache stores no views: the target sees random views")
        return drawn[0]

    def _first_slot_of_view(self) -> Tensor:
        if self._first_slot is None:
            same = (self.views[:, :, None, :] == self.views[:, None, :, :]).all(-1)  # (N, K, K)
            self._first_slot = same.int().argmax(-1)
        return self._first_slot

    def soft_labels(self, index: Tensor, slot: Tensor | None, device: torch.device | str | None = None
                    ) -> dict[str, Tensor]:
        """Per-source (B, C) float32 logits stored for images ``index`` in ``slot`` (None: clean mode's
        single slot), on ``device``."""
        device = device if device is not None else index.device
        index = index.cpu().long()
        slot = torch.zeros_like(index) if slot is None else slot.cpu().long()
        return self._read(index, slot, device)

    def lookup(self, index: Tensor, view: Tensor | None = None, device: torch.device | str | None = None
               ) -> dict[str, Tensor]:
        """Per-source (B, C) float32 logits for images ``index`` seen through ``view`` (exact mode), found by
        searching each image's stored views: for checking a cache (training reads by slot)."""
        if self.mode == "clean":
            return self.soft_labels(index, None, device)
        if view is None:
            raise SSKTError("the exact soft-label cache needs the batch's views (batch['view'])")
        device = device if device is not None else index.device
        index = index.cpu().long()
        match = (self.views[index] == view.cpu().long()[:, None, :]).all(-1)
        if not bool(match.any(1).all()):
            raise SSKTError("a training view is not among the cached ones: with an exact cache the target "
                            "must be shown the views given by stored_views")
        return self._read(index, match.int().argmax(1), device)

    def _read(self, index: Tensor, slot: Tensor, device: torch.device | str) -> dict[str, Tensor]:
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


def stored_k(src: Source, spec: CacheSpec) -> int:
    """How many of a source's outputs the cache keeps per view: the top-k of its logits, or, for a source
    that outputs its embedding (``adapt: features``), every feature (a top-k of features means nothing)."""
    return src.num_classes if src.outputs == "features" else min(spec.topk, src.num_classes)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _progress(total: int, enabled: bool, desc: str) -> Progress:
    return Progress(total, desc, "views", enabled)
