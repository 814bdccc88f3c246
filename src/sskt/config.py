"""Experiment configuration: one YAML file per experiment, with ``key.path=value`` overrides.

Sections: ``data`` (:class:`DataConfig`), ``target`` (:class:`TargetConfig`),
``method`` (``name`` plus that method's own options, validated by the method) and ``train``
(:class:`TrainConfig`). Unknown keys are errors, never silently ignored; a value of the wrong type or
out of range is one error naming its dotted key (:func:`sskt.validation.validate`). ``~`` in any text
value (``out_dir``, ``data.root``, a source's ``checkpoint``) is the user's home folder.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Sequence

import yaml
from annotated_types import Ge, Gt, Lt

from sskt.errors import SSKTError
from sskt.validation import Parsed, validate


@dataclass
class DataConfig:
    """Which data, how much of it is labelled, and how it is augmented.

    ``per_class`` keeps a seeded subset of N labelled training images per class (the low-label
    setting SSKT is for); ``subset_seed`` fixes that subset independently of the training seed, so
    seeds compare methods on the same labels. ``test_per_class`` shrinks the test split (for quick
    checks only). ``grayscale_to_rgb`` repeats grey images to 3 channels.

    ``val_per_class`` holds N more labelled images per class of the training split out as a
    validation split (disjoint from the labelled subset, the unlabelled images and the test split):
    "best" and every selection are made on it, never on the test split.

    ``unlabeled``: images the auxiliary losses learn from without labels: ``rest`` (the training
    split's images outside the labelled subset and the validation split), or a folder of images of
    any size (searched recursively, resized to the training images' size); ``unlabeled_count`` keeps a
    seeded N of them. Each training batch then holds ``unlabeled_ratio`` unlabelled images per
    labelled one (an epoch is still one pass over the labelled images). A method that reads no label
    (cluster-transfer, pretext tasks) pools them with the labelled images instead. ``val_per_class`` and
    ``unlabeled_count`` are "up to": a class with fewer images to spare gives what it has (one notice line).

    ``dataset: imagefolder`` reads ``root/<class>/``, ``root/train/<class>/`` (with or without
    ``root/test/<class>/``) or a CSV file ``path,label[,split]`` as ``root`` (``docs/data.md``). Where the
    data has no test split, sskt makes a seeded (``subset_seed``), stratified one: ``test_fraction`` of
    every class is tested on and, when ``val_fraction`` is set, that fraction of what remains is held out
    for validation; exact copies of a file stay on one side. ``split_file``: a CSV ``path,label,split``
    the split is written to (if absent) or read from (if present), so a rerun sees the same split.
    Without ``image_size``, images of mixed sizes are decoded at a size chosen from them (one notice line).

    ``allow_test_overlap`` lets training images equal test images by content (else an error; docs/data.md).
    """

    dataset: str = "cifar10"
    root: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    # Types and ranges are checked when the config is read (sskt.validation).
    per_class: Annotated[int, Ge(1)] | None = None
    test_per_class: Annotated[int, Ge(1)] | None = None
    subset_seed: int = 0
    image_size: Annotated[int, Ge(1)] | None = None
    grayscale_to_rgb: bool = True
    crop_padding: Annotated[int, Ge(0)] = 4
    flip: bool = True
    download: bool = False
    num_workers: Annotated[int, Ge(0)] = 0
    options: dict | None = None  # dataset-specific settings
    val_per_class: Annotated[int, Ge(1)] | None = None
    unlabeled: str | None = None  # rest | a folder of images
    unlabeled_count: Annotated[int, Ge(1)] | None = None
    unlabeled_ratio: Annotated[float, Gt(0)] = 1.0
    test_fraction: Annotated[float, Gt(0), Lt(1)] = 0.2  # of each class, where sskt makes the test split
    val_fraction: Annotated[float, Gt(0), Lt(1)] | None = None  # of what remains for training, when set
    split_file: str | None = None  # CSV path,label,split: written if absent, reused if present
    # Labelled batches drawn class-balanced: "auto" when the largest class has more than 3x the images of the
    # smallest (single-label data), true / false to choose.
    balanced: bool | str = "auto"
    allow_test_overlap: bool = False  # train on images that are also test images (by content), recorded

    def __post_init__(self) -> None:
        if isinstance(self.balanced, str) and self.balanced != "auto":
            raise SSKTError(f"data.balanced: must be auto, true or false, got {self.balanced!r}")


@dataclass
class TargetConfig:
    """The target network: an architecture name, optionally initial weights and stage names.

    ``model_kwargs``: more arguments for the architecture, passed on as ``timm.create_model`` takes them
    (``{drop_rate: 0.3, drop_path_rate: 0.1}``); only architectures timm builds take them.
    """

    arch: str = "cifar_resnet20"
    checkpoint: str | None = None  # initial weights (fine-tuning); the classifier is replaced if it differs
    pretrained: bool | str = False  # or the arch's published weights (see sskt.models.pretrained)
    allow_download: bool = False  # pretrained weights not in a local cache may be downloaded
    stages: list[str] | None = None  # modules tapped by transfer heads; default: the architecture's stages
    mean: list[float] | None = None
    std: list[float] | None = None
    model_kwargs: dict | None = None  # timm.create_model's keyword arguments (drop_rate, drop_path_rate, ...)


@dataclass
class TrainConfig:
    """The optimisation loop. Defaults follow the reference CIFAR recipe (SGD 0.1, momentum 0.9,
    weight decay 5e-4, batch 128, 200 epochs, lr x0.2 at epochs 60/120/160)."""

    epochs: Annotated[int, Ge(1)] = 200
    batch_size: Annotated[int, Ge(1)] = 128
    eval_batch_size: Annotated[int, Ge(1)] = 512
    lr: Annotated[float, Gt(0)] = 0.1
    momentum: Annotated[float, Ge(0), Lt(1)] = 0.9
    weight_decay: Annotated[float, Ge(0)] = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"  # multistep | cosine | constant
    milestones: list[int] = field(default_factory=lambda: [60, 120, 160])
    gamma: Annotated[float, Gt(0)] = 0.2
    precision: str = "32-true"  # Lightning precision of the target: 32-true, bf16-mixed, 16-mixed
    # The target (its trainable part) and its 4-D inputs in channels_last memory: with bf16 autocast on a CPU with
    # AVX-512-bf16 / AMX this is the fast path. "auto": on with a mixed precision, off with 32-true.
    channels_last: bool | str = "auto"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: Annotated[int, Ge(1)] = 1
    eval_every: Annotated[int, Ge(1)] = 1
    checkpoint_every: Annotated[int, Ge(1)] = 1  # epochs between checkpoints (last.ckpt); resume loses at most this many
    progress_bar: bool = True
    log_every_n_steps: Annotated[int, Ge(1)] = 10
    limit_train_batches: Any = None  # quick checks: a number of batches or a fraction
    resume: bool = True  # false: start over (the out_dir's checkpoint and results are removed first)
    tensorboard: bool = True
    # More Lightning loggers: names (wandb, mlflow, ...) or mappings of their settings (sskt.engine.loggers).
    loggers: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Types and ranges are checked when the config is read (sskt.validation); this is what they can't say.
        if self.schedule not in ("multistep", "cosine", "constant"):
            raise SSKTError(f"train.schedule: must be multistep, cosine or constant, got {self.schedule!r}")
        if isinstance(self.channels_last, str) and self.channels_last != "auto":
            raise SSKTError(f"train.channels_last: must be auto, true or false, got {self.channels_last!r}")

    @property
    def uses_channels_last(self) -> bool:
        """Whether the target trains in channels_last (``channels_last: auto``: with a mixed precision)."""
        if self.channels_last == "auto":
            return "mixed" in str(self.precision)
        return bool(self.channels_last)


@dataclass
class ExperimentConfig:
    """A whole experiment. ``out_dir`` holds checkpoints, logs, ``result.json`` and ``target.pt``.

    Example:
        >>> cfg = ExperimentConfig.from_dict({"method": {"name": "scratch"}, "train": {"epochs": 2}})
        >>> cfg.train.epochs, cfg.method["name"]
        (2, 'scratch')
    """

    name: str = "experiment"
    seed: int = 0
    out_dir: str = "runs/experiment"
    data: Annotated[DataConfig, Parsed(DataConfig)] = field(default_factory=DataConfig)
    target: Annotated[TargetConfig, Parsed(TargetConfig)] = field(default_factory=TargetConfig)
    method: dict = field(default_factory=lambda: {"name": "scratch"})
    train: Annotated[TrainConfig, Parsed(TrainConfig)] = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, raw: dict) -> "ExperimentConfig":
        if not isinstance(raw, dict):
            raise SSKTError(f"an experiment config must be a mapping of sections (name, seed, out_dir, data, target, "
                            f"method, train), got {_kind(raw)}")
        raw = expand_home(copy.deepcopy(raw))
        if not isinstance(raw.get("method", {"name": "scratch"}), dict):
            raise SSKTError(f"method: expected a mapping with a name, e.g. method: {{name: sskt, ...}}, got "
                            f"{_kind(raw['method'])}")
        # An empty section (``train:`` with nothing under it) is that section's defaults.
        return validate(cls, {k: {} if v is None and k in ("data", "target", "train") else v for k, v in raw.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> "ExperimentConfig":
        path = Path(path)
        if not path.is_file():
            raise SSKTError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SSKTError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise SSKTError(f"{path} must be a mapping of sections (name, seed, out_dir, data, target, method, "
                            f"train), got {_kind(raw)}")
        return cls.from_dict(apply_overrides(raw, overrides))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: Sequence[str]) -> "ExperimentConfig":
        return ExperimentConfig.from_dict(apply_overrides(self.to_dict(), overrides))


def expand_home(value: Any) -> Any:
    """Every text value that is ``~`` or starts with ``~/`` (in dicts and lists, at any depth) with the
    user's home folder in its place.

    Example:
        >>> expand_home({"out_dir": "~/runs", "method": {"sources": [{"checkpoint": "~"}]}}) == {
        ...     "out_dir": os.path.expanduser("~/runs"), "method": {"sources": [{"checkpoint": os.path.expanduser("~")}]}}
        True
    """
    if isinstance(value, dict):
        return {k: expand_home(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_home(v) for v in value]
    if isinstance(value, str) and (value == "~" or value.startswith(("~/", "~" + os.sep))):
        return os.path.expanduser(value)
    return value


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), type(value).__name__) + f" ({value!r:.60})"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's problem and where (line, column; 1-based), in one line."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; list items by index: ``sources.0.alpha``).

    Example:
        >>> apply_overrides({"train": {"epochs": 200}}, ["train.epochs=3", "method.name=sskt"])
        {'train': {'epochs': 3}, 'method': {'name': 'sskt'}}
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SSKTError(f"override {item!r} must look like key.path=value")
        key, text = item.split("=", 1)
        try:
            value = _coerce_number(yaml.safe_load(text)) if text else None
        except yaml.YAMLError as err:
            raise SSKTError(f"override {key}: {text!r} is not valid YAML ({str(err).splitlines()[0]}); "
                            f"check its brackets and quotes") from None
        node: Any = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_index(part, node, key)]
            else:
                if node.get(part) is None:  # an empty section (``options: null``) is filled in
                    node[part] = {}
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise SSKTError(f"override {key}: {'.'.join(parts[:i + 1])} is {node!r}, not a section or a list")
        last = parts[-1]
        if isinstance(node, list):
            node[_index(last, node, key)] = value
        else:
            node[last] = value
    return raw


def _coerce_number(value: Any) -> Any:
    """``1e-3`` on the command line means the number (YAML 1.1 would keep it a string)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _index(part: str, node: list, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise SSKTError(f"override {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)
