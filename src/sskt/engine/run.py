"""fit / evaluate / export: the Python API behind the CLI."""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from torch.utils.data import DataLoader

from sskt.config import DataConfig, ExperimentConfig
from sskt.data.datasets import load_data
from sskt.data.sampling import MixedBatchSampler, epochs_per_unlabeled_pass, needs_balancing
from sskt.data.tensor_dataset import ImageSplits, ImageTensorDataset, collate_batch
from sskt.engine.export import export as export_target
from sskt.engine.history import best_by_validation, reader_record
from sskt.engine.lit import MethodModule
from sskt.engine.loggers import build_loggers
from sskt.engine.rundir import announce, prepare_run_dir, run_lock
from sskt.errors import SSKTError
from sskt.evaluation.scoring import evaluate_model
from sskt.io import atomic_json_dump, atomic_torch_save
from sskt.methods import BuildContext, METHODS, Method, build_method
from sskt.models.weights import read_checkpoint


# Lightning warnings that describe sskt's design, not a problem: in-memory tensors need no workers,
# frozen sources are in eval mode on purpose, and small subsets have few batches per epoch.
_EXPECTED_WARNINGS = (".*does not have many workers.*", ".*module\\(s\\) in eval mode.*",
                      ".*smaller than the logging interval.*", ".*LeafSpec.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no GPU/TPU/tip banners


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: an interrupted write never
    leaves a truncated ``last.ckpt`` behind."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)


class SaveLast(L.Callback):
    """Writes ``last.ckpt`` every ``every`` epochs and after the final one (after that epoch's
    evaluation, so the checkpoint's history includes it)."""

    def __init__(self, path: Path, every: int = 1) -> None:
        self.path, self.every = Path(path), max(int(every), 1)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every == 0 or epoch == trainer.max_epochs:
            bad = non_finite_tensors(module)
            if bad:  # never checkpoint a diverged model: the previous good checkpoint stays
                raise SSKTError(
                    f"the weights became non-finite in epoch {trainer.current_epoch + 1} ({', '.join(bad[:3])}); "
                    f"{self.path} still holds the last good epoch. Lower train.lr and start over "
                    f"(train.resume=false, or a new out_dir)")
            # weights_only=False: resuming needs the optimiser and loop state. Collective under DDP; rank 0 writes.
            trainer.save_checkpoint(self.path, weights_only=False)


class EvaluateLastEpoch(L.Callback):
    """Every run is scored after its last epoch, whatever ``train.eval_every`` says (an epoch count it does
    not divide would otherwise end a run with no final score)."""

    def __init__(self, every: int) -> None:
        self.every = max(int(every), 1)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        trainer.check_val_every_n_epoch = 1 if last else self.every


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers (BatchNorm statistics) holding NaN or inf."""
    named = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


@dataclass
class RunResult:
    """What a finished run reports (also written to ``out_dir/result.json``), in the reader's convention
    (:mod:`sskt.engine.history`): percent, epochs from 1, rounded."""

    out_dir: Path
    metric: str
    final: float
    best: float
    history: list[dict]
    record: dict

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "checkpoints" / "last.ckpt"


def build_context(cfg: ExperimentConfig, splits: ImageSplits) -> BuildContext:
    return BuildContext(num_classes=splits.num_classes, input_shape=tuple(splits.train.images.shape[1:]),
                        multilabel=splits.multilabel, target=cfg.target, seed=cfg.seed, classes=splits.classes,
                        train_data=splits.training_set(), data=cfg.data, test_data=splits.test,
                        val_data=splits.val)


def loaders(cfg: ExperimentConfig, splits: ImageSplits, train_set: ImageTensorDataset, pooled: bool = False
            ) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The training loader (seeded :class:`MixedBatchSampler`: labelled + unlabelled images, resumable,
    sharded over DDP ranks) and the evaluation loaders by split name (``val`` first when there is one).
    ``pooled``: for a method that reads no label, every training image is drawn alike (an epoch is one
    pass over all of them; ``data.unlabeled_ratio`` does not apply)."""
    workers = cfg.data.num_workers
    if len(splits.train) < cfg.train.batch_size:
        raise SSKTError(f"the training split has {len(splits.train)} images, fewer than train.batch_size="
                        f"{cfg.train.batch_size}; lower the batch size")
    n_unlabeled = 0 if splits.unlabeled is None else len(splits.unlabeled)
    n_labeled = len(splits.train)
    if pooled:
        n_labeled, n_unlabeled = n_labeled + n_unlabeled, 0
    # Full batches only: BatchNorm never sees a 1-image last batch.
    sampler = MixedBatchSampler(n_labeled, n_unlabeled, cfg.train.batch_size, cfg.data.unlabeled_ratio,
                                seed=cfg.seed, labels=None if pooled else balanced_labels(cfg, splits))
    train = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_batch, num_workers=workers,
                       persistent_workers=workers > 0)
    evals = {name: DataLoader(data, batch_size=cfg.train.eval_batch_size, shuffle=False, collate_fn=collate_batch,
                              num_workers=workers, persistent_workers=workers > 0)
             for name, data in (("val", splits.val), ("test", splits.test)) if data is not None}
    return train, evals


def balanced_labels(cfg: ExperimentConfig, splits: ImageSplits) -> torch.Tensor | None:
    """The labelled images' classes when batches are to be drawn class-balanced (``data.balanced``), else None."""
    targets = splits.train.targets
    if splits.multilabel or targets.ndim != 1 or cfg.data.balanced is False:
        return None
    if cfg.data.balanced == "auto" and not needs_balancing(targets):
        return None
    if cfg.data.balanced == "auto":
        print("sskt: labelled batches are drawn class-balanced (data.balanced: auto; set false to draw them "
              "as they come)", file=sys.stderr, flush=True)
    return targets


def _versions() -> dict[str, str]:
    import lightning
    import torchvision

    import sskt

    return {"sskt": sskt.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "lightning": lightning.__version__, "python": platform.python_version()}


def make_trainer(cfg: ExperimentConfig, out_dir: Path, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    from lightning.pytorch.callbacks import LearningRateMonitor

    t = cfg.train
    logs = build_loggers(t.loggers, out_dir, t.tensorboard)
    ckpt = SaveLast(out_dir / "checkpoints" / "last.ckpt", t.checkpoint_every)
    return L.Trainer(
        max_epochs=t.epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        num_nodes=t.num_nodes, precision=t.precision, logger=logs,
        callbacks=[ckpt, EvaluateLastEpoch(t.eval_every), LearningRateMonitor(logging_interval="epoch"), *callbacks],
        use_distributed_sampler=False,  # MixedBatchSampler shards training batches itself (seeded, resumable)
        plugins=[AtomicCheckpointIO()], enable_progress_bar=t.progress_bar, log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.eval_every, num_sanity_val_steps=0, default_root_dir=out_dir,
        limit_train_batches=t.limit_train_batches, enable_model_summary=False, enable_checkpointing=False,
    )


def seed_run(seed: int) -> None:
    """Seed every generator a run draws from (Python, NumPy, torch, loader workers), as :func:`fit` does
    first: what is built before training (randomly initialised sources, heads) is then the same in every
    command that builds it (``sskt cache`` builds the cache ``fit`` will read)."""
    L.seed_everything(seed, workers=True, verbose=False)


def fit(cfg: ExperimentConfig, callbacks: Sequence[L.Callback] = ()) -> RunResult:
    """Train ``cfg`` to the end, resuming from ``out_dir/checkpoints/last.ckpt`` if it exists.

    Writes logs (CSV, TensorBoard), checkpoints, ``result.json`` (config, seed, versions, wall time,
    per-epoch test metric) and ``target.pt`` (the target alone) under ``cfg.out_dir``. The folder is locked
    until it returns or raises: a second run started in it meanwhile stops at once (SSKTError).

    Example:
        >>> cfg = ExperimentConfig.from_yaml("configs/quick_digits.yaml")  # doctest: +SKIP
        >>> result = fit(cfg); print(result.final)  # doctest: +SKIP
    """
    with run_lock(Path(cfg.out_dir)):  # one run at a time in a folder, before anything is read or written
        return _fit_locked(cfg, callbacks)


def _fit_locked(cfg: ExperimentConfig, callbacks: Sequence[L.Callback]) -> RunResult:
    started = time.perf_counter()
    seed_run(cfg.seed)
    out_dir = Path(cfg.out_dir)
    # Before any decoding: a folder that cannot be written, or that holds another experiment, is refused.
    announce(prepare_run_dir(cfg.to_dict(), out_dir, cfg.train.resume))
    splits = load_data(with_split_file(cfg.data, out_dir), min_train_images=cfg.train.batch_size)
    ctx = build_context(cfg, splits)
    method = build_method(cfg.method, ctx)
    if splits.unlabeled is not None:
        if not method.learns_from_unlabeled:
            raise SSKTError(f"method {cfg.method.get('name')!r} does not learn from unlabelled images; drop "
                            f"data.unlabeled (methods that do: {', '.join(learning_from_unlabeled())})")
        if method.uses_labels:
            passes = epochs_per_unlabeled_pass(len(splits.train), len(splits.unlabeled), cfg.train.batch_size,
                                               cfg.data.unlabeled_ratio)
            seen = f"every unlabelled image is seen once every {passes:.1f} epoch(s)"
        else:
            seen = f"{cfg.method.get('name')} reads no label: an epoch is one pass over all of them"
        print(f"sskt: {len(splits.train)} labelled + {len(splits.unlabeled)} unlabelled training images; {seen}",
              file=sys.stderr, flush=True)
    method.prepare(ctx)  # the expensive, data-dependent part (soft-label cache, probes, clusters)
    module = MethodModule(method, cfg.train, cfg.data.crop_padding, cfg.data.flip, splits.num_classes,
                          splits.multilabel, cfg.seed, cfg.to_dict(), splits.classes, wall_start=started,
                          input_shape=ctx.input_shape)
    train_loader, eval_loaders = loaders(cfg, splits, ctx.train_data, pooled=not method.uses_labels)
    module.eval_splits = list(eval_loaders)
    trainer = make_trainer(cfg, out_dir, callbacks)
    last = out_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if cfg.train.resume and last.is_file() else None
    with warnings.catch_warnings():
        for expected in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=expected)
        # Our checkpoints hold tensors and plain data only: resume without unpickling arbitrary objects.
        try:
            trainer.fit(module, train_loader, list(eval_loaders.values()), ckpt_path=resume, weights_only=True)
        except SystemExit:
            # Lightning answers Ctrl-C with sys.exit(1) and leaves SIGINT ignored: restore it, report an interrupt.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if trainer.interrupted:
                raise KeyboardInterrupt from None
            raise
    if trainer.interrupted:
        raise SSKTError(f"training was interrupted; run the same command again to resume from {last}")
    key = f"test_{module.metric_name}"
    if not module.history or module.history[-1]["epoch"] != cfg.train.epochs - 1:
        # A run finished before every run was scored at its end (or resumed at its end): score it now.
        module.final_epoch = cfg.train.epochs - 1
        trainer.validate(module, list(eval_loaders.values()), verbose=False)
    history = module.history
    if not history:
        raise SSKTError(f"the run in {out_dir} has no evaluation; start it over with train.resume=false")
    # Built in the engine's convention (best picked at full precision), then written in the reader's.
    record = {
        "name": cfg.name, "seed": cfg.seed, "config": cfg.to_dict(), "versions": _versions(),
        "metric": module.metric_name, "final": history[-1][key], **best_by_validation(history, module.metric_name),
        "final_macro_acc": history[-1].get("test_macro_acc"),
        "history": history, "train_seconds": module.train_seconds,
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 2), "resumed_from": resume,
        "wall_seconds": round(module.wall_seconds(), 2),
        "train_images": len(splits.train), "test_images": len(splits.test), "machine": platform.machine(),
        "val_images": len(splits.val) if splits.val is not None else 0,
        "unlabeled_images": len(splits.unlabeled) if splits.unlabeled is not None else 0,
        # Test images found in training streams ({} when checked and clean; counts only under allow_test_overlap).
        "test_overlap": splits.meta.get("test_overlap"),
        **method.extra_results(),
    }
    record = reader_record(record)
    if trainer.is_global_zero:
        atomic_json_dump(record, out_dir / "result.json")
        method.target.save(out_dir / "target.pt", classes=splits.classes, input_size=int(ctx.input_shape[-1]),
                           input_shape=list(ctx.input_shape), multilabel=bool(splits.multilabel))
    return RunResult(out_dir, module.metric_name, record["final"], record["best"], record["history"], record)


def with_split_file(data: DataConfig, out_dir: Path, only_existing: bool = False) -> DataConfig:
    """``data`` with ``split_file`` set to ``out_dir/split.csv`` when the config names none: a split sskt makes
    (a folder without a test split) is written into the run folder, to be audited and reused.
    ``only_existing``: only if that file is there (rebuilding a finished run)."""
    if data.split_file is not None:
        return data
    path = out_dir / "split.csv"
    if only_existing and not path.is_file():
        return data
    return dataclasses.replace(data, split_file=str(path))


def learning_from_unlabeled() -> list[str]:
    return [n for n in METHODS.names() if METHODS.get(n).learns_from_unlabeled]


def load_trained(checkpoint: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[ExperimentConfig, Method]:
    """The config and method of a training checkpoint (``last.ckpt``), weights loaded; the method is built,
    not prepared (no cache, probe or clustering: its ``prepare`` is for training)."""
    ckpt = read_checkpoint(checkpoint, trust_pickle=False)
    if not isinstance(ckpt, dict) or "sskt_config" not in ckpt:
        raise SSKTError(f"{checkpoint} is not an sskt training checkpoint (no sskt_config); a model file such as "
                        f"target.pt loads with sskt.load_model(path) and is scored on class folders with "
                        f"sskt evaluate MODEL DATA_DIR")
    cfg = ExperimentConfig.from_dict(ckpt["sskt_config"]).with_overrides(overrides)
    # Rebuilding needs no unlabelled images (nothing is trained): don't decode them. A split the run made is read
    # back from its folder (checkpoints/last.ckpt's grandparent), so later files in the data folder change nothing.
    cfg.data = with_split_file(cfg.data, Path(checkpoint).resolve().parent.parent, only_existing=True)
    splits = load_data(dataclasses.replace(cfg.data, unlabeled=None))
    method = build_method(cfg.method, build_context(cfg, splits))
    state = {k[len("method."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("method.")}
    missing, unexpected = method.load_state_dict(state, strict=False)
    frozen = tuple(method.frozen_prefixes())
    missing = [k for k in missing if not k.startswith(frozen)]
    if missing or unexpected:
        raise SSKTError(f"{checkpoint} does not fit its config: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return cfg, method


def evaluate(checkpoint: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Score a training checkpoint's main head on its config's test split (overridable)."""
    cfg, method = load_trained(checkpoint, overrides)
    if not method.uses_labels:  # a pretext task's or cluster ids' head: scoring it on the classes means nothing
        name = cfg.method.get("name")
        raise SSKTError(f"{checkpoint} was trained on {name}'s own task, not on the dataset's classes (its score "
                        f"on that task is `final` in its result.json); probe what it learnt with `sskt evaluate "
                        f"{checkpoint} --protocol linear` (or knn, finetune), or start a target from it with "
                        f"target.checkpoint={Path(checkpoint).resolve().parent.parent / 'target.pt'}")
    splits = load_data(cfg.data)
    value = evaluate_model(method, splits.test, splits.multilabel, cfg.train.eval_batch_size)
    return {"checkpoint": str(checkpoint), "metric": "map" if splits.multilabel else "acc", "value": value,
            "test_images": len(splits.test)}


def export(checkpoint: str | os.PathLike, path: str | os.PathLike, format: str | None = None) -> Path:
    """Write the target alone (main head, no auxiliary heads, no sources; an sskt model file by default)
    and its model card (``<path>.md``); needs neither the data nor the sources. See :mod:`sskt.engine.export`."""
    return export_target(checkpoint, path, format).path
