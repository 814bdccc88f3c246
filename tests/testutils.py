"""Helpers shared by the test files (imported as `testutils`; conftest puts this folder on sys.path)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSKT_SHARED", ROOT.parent / "shared"))
CIFAR_JPEG = SHARED / "datasets" / "cifar10-jpeg"
CIFAR_WEIGHTS = SHARED / "weights" / "cifar10-resnets"
# The CIFAR-10 ResNet checkpoints in CIFAR_WEIGHTS (Idelbayev's published files), by depth.
CIFAR_RESNETS = {20: CIFAR_WEIGHTS / "resnet20-12fca82f.th", 32: CIFAR_WEIGHTS / "resnet32-d509ac18.th",
                 44: CIFAR_WEIGHTS / "resnet44-014dd654.th"}
DIGITS_CHANCE = 10.0  # top-1 (%) of guessing on the ten classes of the bundled digits


def need(path: Path) -> Path:
    """Skip the calling test when a file or folder from ../shared is missing."""
    if not path.exists():
        pytest.skip(f"{path} not found (the shared datasets/weights folder is absent on this machine)")
    return path


def tiny_config(tmp_path: Path, **sections: dict) -> dict:
    """A raw experiment dict on bundled digits, small enough for a test (a few seconds)."""
    raw = {
        "name": "t", "seed": 0, "out_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "per_class": 10, "crop_padding": 1, "flip": False},
        "target": {"arch": "cifar_resnet20"},
        "method": {"name": "scratch"},
        "train": {"epochs": 1, "batch_size": 20, "lr": 0.05, "schedule": "cosine", "progress_bar": False,
                  "tensorboard": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) and key != "method" else value
    return raw


class FakeModule:
    """The bits of MethodModule a method's manual step uses (optimisers, manual_backward)."""

    def __init__(self, optimizers: list) -> None:
        self._optimizers = optimizers

    def optimizers(self) -> Any:
        return self._optimizers

    def manual_backward(self, loss: Any) -> None:
        loss.backward()


class CrashInEpoch(L.Callback):
    """Raises "simulated crash" at the third step of ``epoch``: the interruption a resume test recovers from."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 2:
            raise RuntimeError("simulated crash")


def assert_unloadable(path: Path, says: str, tmp_path: Path, capsys: Any) -> None:
    """``sskt.load_model(path)`` and ``sskt predict path IMAGE`` refuse the file in one line containing ``says``."""
    from PIL import Image

    import sskt
    from sskt.cli import main
    from sskt.errors import SSKTError

    with pytest.raises(SSKTError) as err:
        sskt.load_model(path)
    assert says in str(err.value) and "\n" not in str(err.value)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    capsys.readouterr()
    assert main(["predict", str(path), str(image)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sskt: error:") and says in lines[0]
