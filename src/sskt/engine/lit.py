"""The Lightning module that runs any :class:`~sskt.methods.Method`."""
from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from sskt.data.augment import to_float
from sskt.data.views import TrainingViews
from sskt.engine.export import target_record
from sskt.engine.rundir import flatten
from sskt.errors import SSKTError
from sskt.methods.base import Method, labeled_rows
from sskt.metrics import MultilabelMAP
from sskt.optim import make_optimizer, make_scheduler


class MethodModule(L.LightningModule):
    """Owns the loop's plumbing so a method holds only its maths: augmentation, optimiser and
    schedule (it also steps the schedules of a method that steps its own optimisers), metrics (top-1
    or mAP), per-loss logging, the NaN guard, and the per-epoch history.

    Each evaluation scores the validation split (``val/...``, when the data has one: every selection
    is made on it) and the test split (``test/...``, reported, never selected on), and logs ``hp_metric``:
    the validation score (the test score without a validation split). Accuracies are in percent
    (``train/acc`` too). ``history`` counts epochs from 0 at full precision (checkpoints resume from it);
    :func:`sskt.engine.history.reader_history` gives it as ``result.json`` shows it.
    Multi-label tasks report the standard per-class mAP (``test/map``: one AP per class over the whole
    test set, entries in the batch's ``ignore`` mask left out, then the mean), each class's AP
    (``test/ap/<class>``) and the SSKT code's per-image AP as ``test/legacy_samplewise_ap`` (not mAP).

    Frozen modules (sources, teachers) are left out of checkpoints; they are rebuilt from their
    own files when a run resumes.
    """

    def __init__(self, method: Method, train_cfg: Any, crop_padding: int = 4, flip: bool = True,
                 num_classes: int = 10, multilabel: bool = False, seed: int = 0,
                 config: dict | None = None, classes: list[str] | None = None,
                 wall_start: float | None = None, input_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.input_shape = input_shape  # one example's (C, H, W) or (C, T, H, W): what an exported model takes
        self.config = config or {}  # stored in checkpoints so evaluate/export can rebuild the run
        # Every logger (hparams.yaml, TensorBoard, W&B, MLflow) gets the whole config, one dotted key each.
        self.save_hyperparameters(flatten(self.config), logger=True)
        self.method = method
        self.train_cfg = train_cfg
        self.crop_padding, self.flip, self.seed = crop_padding, flip, seed
        self.multilabel = multilabel
        self.classes = list(classes) if classes else [str(i) for i in range(num_classes)]
        self.automatic_optimization = method.automatic_optimization
        self.strict_loading = False  # frozen modules are not in the checkpoint
        # Evaluation splits in the order of the engine's evaluation loaders ("val" first when there is one).
        self.eval_splits: list[str] = ["test"]
        self.metrics = torch.nn.ModuleDict({
            # Top-1 as the mean of per-image correctness (synced over processes): what evaluation_batch
            # scores needs no class count (the dataset's classes, a pretext task's, k clusters).
            split: MultilabelMAP() if multilabel else torchmetrics.aggregation.MeanMetric()
            for split in ("val", "test")})
        # Macro-averaged top-1 (the mean of per-class accuracies), beside top-1: what matters when classes differ in
        # size. Only for logits over the dataset's own classes (not a pretext task's or k clusters).
        self.macro = torch.nn.ModuleDict({
            split: torchmetrics.classification.MulticlassAccuracy(num_classes=max(len(self.classes), 2), average="macro")
            for split in ("val", "test")}) if not multilabel else None
        self._macro_seen: set[str] = set()
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0  # time in training steps only (no evaluation), summed over resumes
        self._step_start = 0.0
        self._loss_sum, self._loss_count = 0.0, 0
        self._views: TrainingViews | None = None
        self.final_epoch: int | None = None  # set for an evaluation after training has ended
        # The run's wall time starts when fit() does: loading data and building caches count.
        self._wall_start = time.perf_counter() if wall_start is None else wall_start
        self._wall_before = 0.0

    @property
    def metric_name(self) -> str:
        return "map" if self.multilabel else "acc"

    def on_train_start(self) -> None:
        # A resumed run may go on for more epochs (sskt.engine.rundir.CONTINUABLE): a cosine schedule restored
        # from the checkpoint would climb back up after its old end, so it is stretched to the new one.
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                config.scheduler.T_max = max(self.train_cfg.epochs, 1)

    def on_fit_start(self) -> None:
        # The fast path with bf16 autocast, for image targets; frozen sources keep the format their bank chose.
        target = getattr(self.method, "target", None)
        if self.train_cfg.uses_channels_last and isinstance(target, torch.nn.Module) and self._images():
            target.to(memory_format=torch.channels_last)

    def _images(self) -> bool:
        return self.input_shape is None or len(self.input_shape) == 3  # (C, H, W), not clips

    def on_train_epoch_start(self) -> None:
        if self._views is None:  # the method is prepared by now: its soft-label store (if any) exists
            self._views = TrainingViews(self.crop_padding, self.flip, self.seed, self.method.soft_label_store())
        self._views.start_epoch(self.current_epoch, self.global_rank)
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._step_start

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        assert self._views is not None
        batch = self._views(batch)  # the views shown (drawn, or stored with their soft labels)
        if self.train_cfg.uses_channels_last and batch["image"].ndim == 4 and self._images():
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        images = batch["image"]
        if self.automatic_optimization:
            out = self.method.training_step(batch)
            loss = sum(out.losses.values())
            self._check_finite(loss, out.losses)
        else:
            out = self.method.manual_step(batch, self)
            loss = None
            if self.trainer.is_last_batch:
                self._step_schedulers()
            self._check_finite(sum(v.detach() for v in out.losses.values()), out.losses)
        bs = images.shape[0]
        self._loss_sum += float(sum(v.detach() for v in out.losses.values()))
        self._loss_count += 1
        for name, value in out.losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, on_epoch=True, batch_size=bs)
        for name, metric in out.metrics.items():
            self.log(f"train/{name}", float(metric), on_step=False, on_epoch=True, batch_size=bs)
        self.log("loss", sum(v.detach() for v in out.losses.values()), prog_bar=True, logger=False, batch_size=bs)
        if not self.multilabel:
            if out.targets is not None:  # pretext / pseudo-labels
                logits, labels = out.logits, out.targets
            else:  # the labelled images only
                logits, labelled = labeled_rows(out.logits, batch)
                labels = labelled["target"]
            acc = (logits.detach().argmax(1) == labels).float().mean() * 100.0  # percent, as val/acc and test/acc
            self.log("train/acc", acc, on_step=False, on_epoch=True, batch_size=labels.shape[0])
        return loss

    def _step_schedulers(self) -> None:
        """Manual optimisation: Lightning leaves the method's schedules alone, so the engine steps every one
        of them once per epoch, after the epoch's last step, where Lightning steps an automatic method's
        (before that epoch's evaluation and checkpoint)."""
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

    def _check_finite(self, loss: Tensor, parts: dict[str, Tensor]) -> None:
        if not torch.isfinite(loss):
            named = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
            raise SSKTError(
                f"loss became {float(loss.detach())} at step {self.global_step} (epoch {self.current_epoch + 1}): "
                f"{named}; lower train.lr, or check the inputs and sources for NaN"
            )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.eval_splits[dataloader_idx]
        logits, target = self.method.evaluation_batch({**batch, "image": to_float(batch["image"])})
        metric = self.metrics[split]
        if self.multilabel:
            ignore = batch.get("ignore")
            metric.update(logits.float(), target, ignore)
            weight = None if ignore is None else (~ignore.bool()).float()
            loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), weight=weight)
        else:
            metric.update((logits.argmax(dim=1) == target).float())
            if self.macro is not None and logits.shape[1] == len(self.classes):
                self.macro[split].update(logits.argmax(dim=1), target)
                self._macro_seen.add(split)
            loss = F.cross_entropy(logits.float(), target)
        self.log(f"{split}/loss", loss, on_epoch=True, batch_size=logits.shape[0], sync_dist=True,
                 add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        # After training (fit's closing evaluation) the loop's epoch is one past the last: use the last.
        epoch = self.current_epoch if self.final_epoch is None else self.final_epoch
        entry: dict[str, float] = {"epoch": epoch}
        for split in self.eval_splits:
            metric = self.metrics[split]
            if self.multilabel:
                result = metric.compute()  # already gathered over processes: no sync_dist needed
                value = result["map"] * 100.0
                entry[f"{split}_legacy_samplewise_ap"] = result["legacy_samplewise_ap"] * 100.0
                self.log(f"{split}/legacy_samplewise_ap", entry[f"{split}_legacy_samplewise_ap"])
                if split == "test":
                    for name, ap in zip(self.classes, result["per_class"].tolist()):
                        if ap == ap:  # a class without positives has AP NaN: not logged
                            self.log(f"test/ap/{name}", ap * 100.0)
            else:
                value = float(metric.compute()) * 100.0
                if self.macro is not None and split in self._macro_seen:
                    entry[f"{split}_macro_acc"] = float(self.macro[split].compute()) * 100.0
                    self.log(f"{split}/macro_acc", entry[f"{split}_macro_acc"])
                    self.macro[split].reset()
            metric.reset()
            self.log(f"{split}/{self.metric_name}", value, sync_dist=not self.multilabel)
            entry[f"{split}_{self.metric_name}"] = value
        if not self.trainer.sanity_checking:
            # The hyper-parameter metric (TensorBoard's HPARAMS tab): the score selections are made on.
            selected = "val" if "val" in self.eval_splits else "test"
            self.log("hp_metric", entry[f"{selected}_{self.metric_name}"], sync_dist=not self.multilabel)
            entry["train_seconds"] = round(self.train_seconds, 2)
            if self._loss_count:
                entry["train_loss"] = self._loss_sum / self._loss_count
            self.history = [h for h in self.history if h["epoch"] != epoch] + [entry]
        self._macro_seen.clear()

    def configure_optimizers(self) -> Any:
        cfg = self.train_cfg
        custom = self.method.configure_optimizers(cfg)
        if custom is not None:
            return custom
        optimizer = make_optimizer(self.method.param_groups(cfg), cfg)
        return {"optimizer": optimizer, "lr_scheduler": make_scheduler(optimizer, cfg)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        prefixes = tuple(f"method.{p}" for p in self.method.frozen_prefixes())
        if prefixes:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}
        checkpoint["sskt_config"] = self.config
        checkpoint["sskt"] = {"history": self.history, "train_seconds": self.train_seconds,
                              "wall_seconds": self.wall_seconds()}

        checkpoint["sskt"]["target"] = target_record(self)  # what `sskt export` reads: no data or sources needed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("sskt", {})
        self.history = list(state.get("history", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._wall_before = float(state.get("wall_seconds", 0.0))

    def wall_seconds(self) -> float:
        """Wall time of the run so far, over every invocation (cache building and evaluation included)."""
        return self._wall_before + time.perf_counter() - self._wall_start
