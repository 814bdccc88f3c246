"""Shared fixtures of the method tests: a quick digits experiment and a trained digits network."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sskt.config import ExperimentConfig
from testutils import DIGITS_CHANCE


def digits_config(out_dir: Path, method: dict, **train: object) -> ExperimentConfig:
    """A few-second real run: bundled 8x8 digits, 30 labels per class, CIFAR ResNet-20."""
    return ExperimentConfig.from_dict({
        "name": "test", "seed": 0, "out_dir": str(out_dir),
        "data": {"dataset": "digits", "per_class": 30, "test_per_class": 30, "crop_padding": 1},
        "target": {"arch": "cifar_resnet20"},
        "method": method,
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "schedule": "cosine", "progress_bar": False,
                  "tensorboard": False, "eval_every": 3, "accelerator": "cpu", **train},
    })


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """target.pt of a ResNet-20 trained from scratch on digits (a KD teacher, a fine-tuning start)."""
    from sskt.engine.run import fit

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("digits-teacher")
    result = fit(digits_config(out, {"name": "scratch"}, epochs=5, eval_every=5))
    assert result.final > DIGITS_CHANCE
    return out / "target.pt"


@pytest.fixture
def make_config():
    """The :func:`digits_config` factory, as a fixture (test modules here are not a package)."""
    return digits_config
