"""No test image in training: every training stream (labelled, validation, unlabelled) is checked against
the test split by content (the decoded pixels, whatever the file is called); overlap is one error naming the
count and an example file, or, with data.allow_test_overlap, one notice line and a record."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sskt
from sskt.config import DataConfig
from sskt.data.datasets import load_data
from sskt.data.overlap import shared_rows
from sskt.errors import SSKTError

from testutils import CIFAR_JPEG


def _png(path: Path, seed: int, size: int = 8) -> Path:
    """A random (so distinct) RGB image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, per_class: int = 4) -> Path:
    """root/train/<class>/ and root/test/<class>/ of distinct images, CIFAR style."""
    seed = 0
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            for k in range(per_class):
                seed += 1
                _png(root / split / c / f"{k:04d}.png", seed)
    return root


def _copy_pixels(src: Path, dst: Path) -> Path:
    """The same pixels under another name (written again, so not the same bytes either)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im.convert("RGB").save(dst, optimize=True)
    return dst


def _refusal(cfg: DataConfig) -> str:
    with pytest.raises(SSKTError) as err:
        load_data(cfg)
    message = str(err.value)
    assert "\n" not in message and "data.allow_test_overlap: true" in message
    return message


def test_a_renamed_copy_of_a_test_image_among_the_unlabelled_ones_is_refused(tmp_path):
    root = _folder(tmp_path / "data")
    unl = tmp_path / "unlabelled"
    for k in range(4):
        _png(unl / f"{k}.png", 100 + k)
    copy = _copy_pixels(root / "test" / "dog" / "0002.png", unl / "holiday" / "IMG_7.png")
    message = _refusal(DataConfig(dataset="imagefolder", root=str(root), unlabeled=str(unl)))
    assert message.startswith("1 of the 5 unlabelled images is also a test image")
    assert f"{copy} = {root / 'test' / 'dog' / '0002.png'}, by content" in message
    assert f"point data.unlabeled elsewhere or remove them from {unl}" in message


def test_unlabelled_images_pointing_at_the_test_folder_are_refused(tmp_path):
    root = _folder(tmp_path / "data")
    message = _refusal(DataConfig(dataset="imagefolder", root=str(root), unlabeled=str(root / "test")))
    assert message.startswith("8 of the 8 unlabelled images are also test images (e.g. ")
    assert str(root / "test" / "cat" / "0000.png") in message


def test_a_validation_image_equal_to_a_labelled_one_is_refused(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    val = _copy_pixels(root / "train" / "cat" / "0001.png", tmp_path / "data" / "val" / "cat" / "v.png")
    rows = ["path,label,split"] + [f"{p.relative_to(root)},{p.parent.name},{p.parts[-3]}"
                                   for p in sorted(root.rglob("*.png"))]
    (root / "all.csv").write_text("\n".join(rows) + "\n")
    cfg = DataConfig(dataset="imagefolder", root=str(root / "all.csv"))
    message = _refusal(cfg)
    assert message.startswith("1 of the 1 validation images is also a labelled training image (e.g. ")
    assert f"{val} = {root / 'train' / 'cat' / '0001.png'}" in message and "to validate on them" in message
    allowed = load_data(dataclasses.replace(cfg, allow_test_overlap=True))
    assert allowed.meta["test_overlap"] == {"val_train": 1}
    assert "1 validation image is also labelled" in capsys.readouterr().err


def test_training_images_of_a_registered_dataset_are_named_by_their_index():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8))
    train = images[:12].clone()
    train[5] = images[15]  # test image 3 (of images[12:])
    sskt.register_dataset("leaky", {"train": (train, torch.arange(12) % 2), "test": (images[12:], torch.arange(8) % 2)})
    message = _refusal(DataConfig(dataset="leaky"))
    assert message.startswith("1 of the 12 labelled training images is also a test image (e.g. train image 5 = "
                              "test image 3, by content)")


def test_the_flag_trains_on_them_with_one_notice_and_records_the_count(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    splits = load_data(DataConfig(dataset="imagefolder", root=str(root), unlabeled=str(root / "test"),
                                  allow_test_overlap=True))
    assert len(splits.unlabeled) == 8
    assert splits.meta["test_overlap"] == {"unlabeled": 8}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "8 unlabelled images are also test images" in lines[0]
    assert "recorded in result.json" in lines[0]


def test_copies_within_the_test_split_or_within_training_are_fine(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    _copy_pixels(root / "test" / "cat" / "0000.png", root / "test" / "dog" / "again.png")
    _copy_pixels(root / "train" / "cat" / "0000.png", root / "train" / "dog" / "again.png")
    unl = tmp_path / "unlabelled"
    _copy_pixels(root / "train" / "dog" / "0001.png", unl / "a.png")  # an unlabelled copy of a labelled image
    splits = load_data(DataConfig(dataset="imagefolder", root=str(root), unlabeled=str(unl)))
    assert splits.meta["test_overlap"] == {} and capsys.readouterr().err == ""


@pytest.mark.parametrize("train_split,test_split", [("train", "test"), ("source", "test"), ("source", "train")])
def test_the_bundled_digits_have_no_image_in_two_parts(train_split, test_split):
    splits = load_data(DataConfig(dataset="digits", train_split=train_split, test_split=test_split, per_class=5,
                                  val_per_class=5, unlabeled="rest"))
    assert splits.meta["test_overlap"] == {}
    assert len(splits.train) + len(splits.val) + len(splits.unlabeled) in (539, 718)


def test_a_cifar_style_folder_passes(tmp_path):
    root = _folder(tmp_path / "data", per_class=6)
    splits = load_data(DataConfig(dataset="imagefolder", root=str(root), per_class=2, val_per_class=2,
                                  unlabeled="rest"))
    assert splits.meta["test_overlap"] == {} and len(splits.unlabeled) == 4


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason="no CIFAR-10 JPEG copy in ../shared/datasets")
def test_the_cifar10_jpeg_folder_passes():
    splits = load_data(DataConfig(dataset="imagefolder", root=str(CIFAR_JPEG), per_class=40, test_per_class=40))
    assert splits.meta["test_overlap"] == {}


def test_images_one_pixel_apart_are_not_the_same_even_when_large():
    # 3x160x160 is above the size hashed whole: a sample is hashed, then candidates are compared whole
    a = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 3, 160, 160), dtype=np.uint8))
    b = a.clone()
    b[0, 0, 0, 1] ^= 1
    assert shared_rows(b, a) == [(1, 1), (2, 2)]
    assert shared_rows(a[:1], a[1:]) == []


def test_checking_cifar10_sized_streams_takes_a_fraction_of_a_second():
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (60_000, 3, 32, 32), dtype=np.uint8))
    start = time.perf_counter()
    assert shared_rows(x[:50_000], x[50_000:]) == []
    assert time.perf_counter() - start < 5.0  # about 0.3 s on one busy core


def test_a_run_records_that_its_test_split_was_checked(tmp_path):
    from sskt.config import ExperimentConfig
    from sskt.engine.run import fit
    from testutils import tiny_config

    record = fit(ExperimentConfig.from_dict(tiny_config(tmp_path))).record
    assert record["test_overlap"] == {}  # checked, and no test image was in training
