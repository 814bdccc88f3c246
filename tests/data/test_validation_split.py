"""The validation split (data.val_per_class): disjoint from everything else, exact size, the labelled subset
unchanged, and every selection ("best", a probe's layer) made on it rather than on the test split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sskt.config import DataConfig, ExperimentConfig
from sskt.data.datasets import load_data, partition_train
from sskt.engine.run import fit
from sskt.errors import SSKTError

from testutils import tiny_config


def _ids(images: torch.Tensor) -> list[int]:
    """The id written into each synthetic PNG (every pixel of image i holds i)."""
    return images[:, 0, 0, 0].tolist()


def _image_tree(root: Path, classes: int = 3, train: int = 8, test: int = 2) -> Path:
    """root/{train,test}/<class>/<n>.png, 4x4 RGB; each image a different constant value, its id."""
    next_id = 1
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((4, 4, 3), next_id, np.uint8)).save(d / f"{i:03d}.png")
                next_id += 1
    return root


def test_partition_is_disjoint_and_keeps_the_labelled_subset():
    labels = torch.arange(200) % 5
    classes = [str(i) for i in range(5)]
    plain = partition_train(labels, DataConfig(dataset="x", per_class=6, subset_seed=3), classes)
    full = partition_train(labels, DataConfig(dataset="x", per_class=6, subset_seed=3, val_per_class=4,
                                              unlabeled="rest"), classes)
    assert torch.equal(plain.labeled, full.labeled)  # the same labels with or without val/unlabelled
    lab, val, unl = set(full.labeled.tolist()), set(full.val.tolist()), set(full.unlabeled.tolist())
    assert not lab & val and not lab & unl and not val & unl
    assert lab | val | unl == set(range(200))  # "rest" is everything else
    assert torch.bincount(labels[full.val], minlength=5).tolist() == [4] * 5
    assert torch.bincount(labels[full.labeled], minlength=5).tolist() == [6] * 5
    counted = partition_train(labels, DataConfig(dataset="x", per_class=6, subset_seed=3, val_per_class=4,
                                                 unlabeled="rest", unlabeled_count=17), classes)
    assert len(counted.unlabeled) == 17 and set(counted.unlabeled.tolist()) <= unl
    assert torch.equal(counted.val, full.val)


def test_digits_validation_split(tmp_path):
    everything = load_data(DataConfig(dataset="digits", per_class=None))  # the whole train split, in order
    cfg = DataConfig(dataset="digits", per_class=10, subset_seed=2, val_per_class=5, unlabeled="rest")
    splits = load_data(cfg)
    plain = load_data(DataConfig(dataset="digits", per_class=10, subset_seed=2))
    assert torch.equal(splits.train.images, plain.train.images)
    assert torch.equal(splits.train.targets, plain.train.targets)
    assert torch.equal(splits.test.targets, plain.test.targets)  # the test split is untouched
    assert splits.val is not None and len(splits.val) == 50
    assert torch.bincount(splits.val.targets, minlength=10).tolist() == [5] * 10

    part = partition_train(everything.train.targets, cfg, everything.classes)
    assert torch.equal(splits.val.images, everything.train.images[part.val])
    assert torch.equal(splits.train.images, everything.train.images[part.labeled])
    assert torch.equal(splits.unlabeled, everything.train.images[part.unlabeled])
    n = len(everything.train)
    assert len(splits.train) + len(splits.val) + len(splits.unlabeled) == n
    assert len(set(part.labeled.tolist()) | set(part.val.tolist()) | set(part.unlabeled.tolist())) == n


def test_imagefolder_validation_split_is_disjoint_from_every_other_split(tmp_path):
    root = _image_tree(tmp_path / "tree")
    base = dict(dataset="imagefolder", root=str(root), per_class=3, subset_seed=1)
    splits = load_data(DataConfig(**base, val_per_class=2, unlabeled="rest"))
    plain = load_data(DataConfig(**base))
    assert _ids(splits.train.images) == _ids(plain.train.images)
    assert torch.equal(splits.train.targets, plain.train.targets)
    assert torch.bincount(splits.val.targets, minlength=3).tolist() == [2, 2, 2]
    train, val, unl, test = (set(_ids(x)) for x in (splits.train.images, splits.val.images, splits.unlabeled,
                                                     splits.test.images))
    assert len(train) == 9 and len(val) == 6 and len(unl) == 24 - 9 - 6 and len(test) == 6
    assert not train & val and not train & unl and not val & unl and not (train | val | unl) & test
    # the validation labels belong to their images (class folders hold consecutive ids)
    for image_id, label in zip(_ids(splits.val.images), splits.val.targets.tolist()):
        assert (image_id - 1) // 8 == label


def test_validation_split_takes_what_a_class_can_spare_with_one_notice(tmp_path, capsys):
    root = _image_tree(tmp_path / "tree")  # 8 training images per class
    splits = load_data(DataConfig(dataset="imagefolder", root=str(root), per_class=5, val_per_class=4))
    assert torch.bincount(splits.val.targets, minlength=3).tolist() == [3, 3, 3]  # all 3 left outside the 5
    assert torch.bincount(splits.train.targets, minlength=3).tolist() == [5, 5, 5]  # the labels are exact
    assert not set(_ids(splits.val.images)) & set(_ids(splits.train.images))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.val_per_class=4" in err[0] and "validating on the 9" in err[0]

    everything = load_data(DataConfig(dataset="imagefolder", root=str(root), val_per_class=20))
    assert torch.bincount(everything.train.targets, minlength=3).tolist() == [1, 1, 1]  # one training image kept
    assert len(everything.val) == 21
    with pytest.raises(SSKTError, match=r"data.val_per_class=2: no class has images to spare for validation "
                                        r"\(outside the 8 labelled per class\); lower data.per_class") as err:
        load_data(DataConfig(dataset="imagefolder", root=str(root), per_class=8, val_per_class=2))
    assert "\n" not in str(err.value)
    capped = load_data(DataConfig(dataset="digits", per_class=40, val_per_class=30))
    assert 0 < len(capped.val) < 300 and len(capped.train) == 400


def test_best_is_the_test_score_at_the_best_validation_epoch(tmp_path):
    raw = tiny_config(tmp_path, data={"val_per_class": 5},
                      train={"epochs": 4, "schedule": "constant", "lr": 0.1})
    result = fit(ExperimentConfig.from_dict(raw))
    hist = result.history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]  # counted from 1
    assert all("val_acc" in h and "test_acc" in h for h in hist)
    top = max(range(len(hist)), key=lambda i: (hist[i]["val_acc"], -i))  # earliest of equal scores
    assert result.best == hist[top]["test_acc"]
    assert result.record["best_epoch"] == hist[top]["epoch"]
    assert result.record["best_val"] == hist[top]["val_acc"]
    assert result.record["val_images"] == 50 and result.record["train_images"] == 100
    assert result.record["final"] == hist[-1]["test_acc"]

    no_val = fit(ExperimentConfig.from_dict(tiny_config(tmp_path / "b")))
    assert no_val.best is None and no_val.record["best_epoch"] is None
    assert all("val_acc" not in h for h in no_val.history)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp)))
    return result.checkpoint


def test_linear_protocol_chooses_the_layer_on_the_validation_split(checkpoint, monkeypatch):
    import sskt.evaluation.probes as probes
    from sskt.experiments.protocols import probe_checkpoint

    seen = []

    def fake_probe_layers(model, layers, train_images, train_labels, test_images, test_labels, **kw):
        # On the validation split (50 images) the first layer wins; on the test split the last one does:
        # a selection made on the test split would pick the last layer.
        seen.append(len(test_images))
        on_val = len(test_images) == 50
        return {name: {"linear_top1": (0.9 - 0.1 * i) if on_val else (0.2 + 0.1 * i), "dim": 4}
                for i, name in enumerate(layers)}

    monkeypatch.setattr(probes, "probe_layers", fake_probe_layers)
    out = probe_checkpoint(checkpoint, "linear", ["data.val_per_class=5"])
    names = list(out["layers"])
    assert len(names) > 1 and 50 in seen
    assert out["best_layer"] == names[0]
    assert out["val_top1"] == pytest.approx(90.0)
    assert out["value"] == out["layers"][names[0]]["top1"] == pytest.approx(20.0)
    assert out["train_images"] == 100  # the validation images are not probe training images

    seen.clear()
    out = probe_checkpoint(checkpoint, "linear")
    assert 50 not in seen
    assert out["best_layer"] is None and out["value"] is None and out["val_top1"] is None


def test_linear_protocol_really_probes_on_the_validation_split(checkpoint):
    from sskt.experiments.protocols import probe_checkpoint

    out = probe_checkpoint(checkpoint, "linear", ["data.val_per_class=5"], layers=["layer3", "layer2"])
    assert out["best_layer"] in ("layer3", "layer2") and 0.0 <= out["val_top1"] <= 100.0
    assert out["value"] == out["layers"][out["best_layer"]]["top1"]
    one = probe_checkpoint(checkpoint, "linear", layers=["layer3"])  # one layer: nothing to choose
    assert one["best_layer"] == "layer3" and one["value"] == one["layers"]["layer3"]["top1"]
