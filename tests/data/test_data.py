"""Datasets, labelled subsets and batch augmentation."""
import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from sskt.data import BatchAugment, DataConfig, apply_view, load_data, per_class_indices
from sskt.data.datasets import read_idx
from sskt.errors import SSKTError


def test_apply_view_matches_pad_crop_flip():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).view(2, 3, 5, 5)
    view = torch.tensor([[0, 2, 1], [3, 1, 0]])
    out = apply_view(x, view, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], padded[0, :, 2:7, 0:5].flip(-1))
    assert torch.equal(out[1], padded[1, :, 1:6, 3:8])


def test_apply_view_on_clips_crops_every_frame_alike():
    clips = torch.randint(0, 255, (2, 3, 4, 6, 6), dtype=torch.uint8)
    view = torch.tensor([[1, 3, 1], [0, 0, 0]])
    out = apply_view(clips, view, padding=2)
    for t in range(4):
        assert torch.equal(out[:, :, t], apply_view(clips[:, :, t], view, padding=2))


def test_batch_augment_is_seeded_and_views_in_range():
    a, va = BatchAugment(4, True, seed=1)(torch.zeros(64, 3, 8, 8, dtype=torch.uint8))
    _, vb = BatchAugment(4, True, seed=1)(torch.zeros(64, 3, 8, 8, dtype=torch.uint8))
    assert torch.equal(va, vb) and a.dtype == torch.float32
    assert va[:, :2].min() >= 0 and va[:, :2].max() <= 8 and set(va[:, 2].tolist()) == {0, 1}


def test_per_class_subset_seeded_and_too_many():
    labels = torch.tensor([0] * 5 + [1] * 3)
    a = per_class_indices(labels, 2, 0, ["x", "y"], "train")
    assert torch.equal(a, per_class_indices(labels, 2, 0, ["x", "y"], "train"))
    assert (labels[a] == 0).sum() == 2 and (labels[a] == 1).sum() == 2
    with pytest.raises(SSKTError, match="class 'y' has 3 train images, fewer than the 4"):
        per_class_indices(labels, 4, 0, ["x", "y"], "train")


def _write_folder(root, n=3, size=8):
    for split in ("train", "test"):
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                shade = (colour[0], colour[1] + (split == "test"), colour[2])  # no test image in training
                Image.new("RGB", (size, size), shade).save(d / f"{i}.png")


def test_imagefolder_decodes_labels_and_subset(tmp_path):
    _write_folder(tmp_path)
    splits = load_data(DataConfig(dataset="imagefolder", root=str(tmp_path), per_class=2))
    assert splits.classes == ["cat", "dog"]
    assert splits.train.images.shape == (4, 3, 8, 8) and splits.test.images.shape == (6, 3, 8, 8)
    cats = splits.train.images[splits.train.targets == 0]
    assert (cats[:, 0] == 255).all() and (cats[:, 2] == 0).all()
    again = load_data(DataConfig(dataset="imagefolder", root=str(tmp_path), per_class=2))  # from the decode cache
    assert torch.equal(again.train.images, splits.train.images)


def test_corrupt_image_is_named(tmp_path):
    _write_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(SSKTError, match=r"corrupt image file .*bad\.jpg"):
        load_data(DataConfig(dataset="imagefolder", root=str(tmp_path)))


def test_idx_reader_and_grey_to_rgb(tmp_path):
    imgs = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    for prefix in ("train", "t10k"):
        pixels = imgs if prefix == "train" else 255 - imgs  # test images differ from the training ones
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + pixels.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([3, 7]))
    assert torch.equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), torch.from_numpy(imgs))
    splits = load_data(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert splits.train.images.shape == (2, 3, 4, 4) and splits.train.targets.tolist() == [3, 7]
    assert torch.equal(splits.train.images[:, 0], splits.train.images[:, 2])


def test_digits_splits_are_disjoint():
    a = load_data(DataConfig(dataset="digits", train_split="source"))
    b = load_data(DataConfig(dataset="digits"))
    assert len(a.train) == 718 and len(b.train) == 539 and len(b.test) == 540
    flat = lambda x: {bytes(v) for v in x.images.flatten(1).numpy()}  # noqa: E731
    assert len(flat(a.train) & flat(b.test)) < 20  # only duplicated digit images can coincide


def test_missing_root_message(tmp_path):
    with pytest.raises(SSKTError, match="does not exist; fix data.root"):
        load_data(DataConfig(dataset="imagefolder", root=str(tmp_path / "nope")))


def _fake_cifar10(tmp_path):
    import pickle

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 255, (20, 3072), dtype=np.uint8)
        with open(base / name, "wb") as fh:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(20)]}, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return base


def test_cifar10_python_layout_and_missing_files(tmp_path):
    import pickle

    base = _fake_cifar10(tmp_path)
    splits = load_data(DataConfig(dataset="cifar10", root=str(tmp_path), per_class=3))
    assert splits.train.images.shape == (30, 3, 32, 32) and splits.test.images.shape == (20, 3, 32, 32)
    assert splits.classes[0] == "c0"
    with open(base / "data_batch_1", "rb") as fh:
        first = pickle.load(fh)["data"][0].reshape(3, 32, 32)
    full = load_data(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert np.array_equal(full.train.images[0].numpy(), first)  # channel-first, row-major like torchvision
    (base / "test_batch").unlink()
    with pytest.raises(SSKTError, match="test_batch not found"):
        load_data(DataConfig(dataset="cifar10", root=str(tmp_path)))


def test_download_only_behind_the_flag(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeCIFAR10:  # stands in for the network: "downloads" by writing the files locally
        def __init__(self, root, download=False, train=True):
            calls.append((download, train))
            _fake_cifar10(tmp_path)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    with pytest.raises(SSKTError, match="data.download: true"):
        load_data(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert calls == []  # never fetched without the flag
    splits = load_data(DataConfig(dataset="cifar10", root=str(tmp_path), download=True))
    assert calls == [(True, True), (True, False)] and len(splits.train) == 100


def test_empty_class_folder_is_named_when_every_image_is_labelled(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "test" / "emu").mkdir()
    with pytest.raises(SSKTError, match=r"class folder\(s\) \['emu'\] under .* hold no images"):
        load_data(DataConfig(dataset="imagefolder", root=str(tmp_path)))


def test_too_few_images_for_a_batch_is_refused_before_decoding(tmp_path, monkeypatch):
    import sskt.data.datasets as datasets

    _write_folder(tmp_path)
    monkeypatch.setattr(datasets, "decode_images", lambda *a, **k: pytest.fail("decoded before the check"))
    with pytest.raises(SSKTError, match="has 4 labelled images, fewer than train.batch_size=8"):
        load_data(DataConfig(dataset="imagefolder", root=str(tmp_path), per_class=2), min_train_images=8)
