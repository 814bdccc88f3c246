"""A run on a folder without a test split writes the split it made into its run folder and reads it back when
the run is evaluated: images added to the folder later change neither the training nor the test split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sskt.config import ExperimentConfig
from sskt.engine.run import evaluate, fit


def _folder(root: Path, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 40, 40), (40, 200, 40)]):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")


def test_the_split_is_written_to_the_run_folder_and_read_back(tmp_path: Path) -> None:
    data, out = tmp_path / "photos", tmp_path / "run"
    _folder(data)
    cfg = ExperimentConfig.from_dict({
        "out_dir": str(out), "data": {"dataset": "imagefolder", "root": str(data), "image_size": 16},
        "method": {"name": "scratch"}, "target": {"arch": "cifar_resnet20"},
        "train": {"epochs": 1, "batch_size": 8, "progress_bar": False, "tensorboard": False}})
    result = fit(cfg)
    split = (out / "split.csv").read_text().splitlines()
    assert split[0].startswith("path,label,split") and len(split) == 1 + 24
    assert result.record["test_images"] == sum(line.endswith(",test") for line in split) > 0
    _folder(data, per_class=20)  # more images arrive in the folder after training
    scored = evaluate(out / "checkpoints" / "last.ckpt")
    assert scored["test_images"] == result.record["test_images"]
