"""Extending sskt from Python: your own nn.Module as a source, teacher or target, your own torch Dataset as data,
and registering a name again in a notebook (sskt.register_model, sskt.register_dataset, sskt.image_splits)."""
from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import sskt
from sskt.config import DataConfig, ExperimentConfig
from sskt.data.datasets import DATASETS, load_data
from sskt.errors import SSKTError
from sskt.models.factory import MODELS, create_model
from sskt.sources.source import build_source

from testutils import ROOT, tiny_config

DOC = ROOT / "docs" / "python-api.md"


@pytest.fixture(autouse=True)
def own_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test registers lives in copies of the registries' tables, gone when the test ends."""
    monkeypatch.setattr(MODELS, "_items", dict(MODELS._items))
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))


def small_classifier(classes: int = 10) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, classes))


def run(tmp_path: Path, callbacks: tuple | list = (), **sections: dict) -> sskt.RunResult:
    """A 1-epoch run of ``tiny_config`` (digits, 10 labels per class) on the CPU."""
    raw = tiny_config(tmp_path, **{"train": {"accelerator": "cpu"}, **sections})
    return sskt.fit(ExperimentConfig.from_dict(raw), callbacks=callbacks)


class FirstSourceCall(L.Callback):
    """Records the input and output of the first forward pass of the run's first source network."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        src = module.method.bank.sources[0]
        src.network.register_forward_hook(
            lambda _m, args, out: self.seen.append((args[0].detach().clone(), out.detach().clone()))
            if not self.seen else None)


# -- registering again --------------------------------------------------------------------------------------


def test_registering_a_model_name_again_replaces_it_with_a_warning():
    sskt.register_model("notebook_net", lambda nc, ic: nn.Sequential(nn.Flatten(), nn.Linear(ic * 64, nc)))
    with pytest.warns(UserWarning, match=r"^architecture 'notebook_net' was registered before; replacing it$"):
        sskt.register_model("notebook_net", lambda nc, ic: nn.Sequential(nn.Flatten(), nn.Linear(ic * 64, 5), nn.ReLU(),
                                                                       nn.Linear(5, nc)))
    assert len(create_model("notebook_net", 3)) == 4  # the second factory builds it


def test_registering_a_dataset_name_again_replaces_it_with_a_warning():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 4, 4).contiguous()
    tests = images + 10  # no test image in training
    sskt.register_dataset("cell", {"train": (images, torch.arange(6) % 2), "test": (tests, torch.arange(6) % 2)})
    with pytest.warns(UserWarning, match="dataset 'cell' was registered before; replacing it"):
        sskt.register_dataset("cell", {"train": (images, torch.arange(6) % 3), "test": (tests, torch.arange(6) % 3)})
    assert load_data(DataConfig(dataset="cell")).classes == ["0", "1", "2"]


# -- your own network ---------------------------------------------------------------------------------------


def test_a_classifier_instance_teaches_with_its_own_weights_and_is_left_as_given(tmp_path: Path):
    net = small_classifier(classes=7)  # in train mode, as a user's module usually is
    before = copy.deepcopy(net.state_dict())
    sskt.register_model("mine", net, input_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    seen = FirstSourceCall()
    result = run(tmp_path, method={"name": "sskt", "sources": [{"name": "mine", "arch": "mine"}],
                                   "source_precision": "fp32"}, callbacks=[seen])
    assert (result.out_dir / "result.json").is_file()
    # The soft labels came from the user's weights: the run's source gave what the module itself gives.
    (inputs, logits), = seen.seen
    assert inputs.shape[-2:] == (16, 16)
    reference = copy.deepcopy(net).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, reference(inputs))
    # ... and the user's module is untouched: weights, BatchNorm statistics, mode and trainability.
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())


def test_a_classifier_instance_is_a_kd_teacher_with_its_own_weights(tmp_path: Path):
    net = small_classifier(classes=10).eval()  # given in eval mode: stays so
    sskt.register_model("teacher_net", net, input_size=16)
    teacher = build_source({"name": "teacher", "arch": "teacher_net"})
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), net(teacher.prepare(x)))
    result = run(tmp_path, method={"name": "kd", "teacher": {"arch": "teacher_net"}})
    assert result.record["teacher_acc"] is not None and not net.training
    assert teacher.network is not net and all(p.requires_grad for p in net.parameters())


def test_a_feature_extractor_instance_trains_as_a_source_with_a_probe(tmp_path: Path):
    backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    sskt.register_model("embedder", backbone, input_size=16)  # no nn.Linear: a feature extractor
    with pytest.raises(SSKTError, match="outputs features .*set adapt: probe"):
        build_source({"name": "f", "arch": "embedder"})
    result = run(tmp_path, method={"name": "sskt", "sources": [{"name": "f", "arch": "embedder", "adapt": "probe"}]})
    assert result.record["adapted/f"]["train_images"] == 100.0  # fitted on the 100 labelled images
    assert all(np.isfinite(h["train_loss"]) for h in result.history)


def test_a_feature_extractor_with_a_linear_layer_inside_is_named_with_features_true():
    torch.manual_seed(0)
    projector = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 12), nn.ReLU(), nn.Linear(12, 6))  # ends in a Linear
    sskt.register_model("projector", projector, input_size=16, features=True)
    src = build_source({"name": "p", "arch": "projector", "adapt": "features"})
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(src(x), projector.eval()(src.prepare(x)))  # its whole output is the embedding
    # As a target: the embedding with a fresh classifier of the task's classes.
    assert create_model("projector", 4)(x).shape == (3, 4)


def test_a_classifier_instance_as_the_target_starts_from_its_weights(tmp_path: Path):
    from sskt.models.target import TargetNetwork

    net = small_classifier(classes=7)
    before = copy.deepcopy(net.state_dict())
    sskt.register_model("start", net, input_size=16, stages=["2"])
    target = TargetNetwork("start", num_classes=10)  # the task's 10 classes: a fresh classifier, the rest as given
    own = target.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in before.items() if not k.startswith("5."))
    assert tuple(own["5.weight"].shape) == (10, 8)
    result = run(tmp_path, target={"arch": "start"})
    assert 0.0 <= result.final <= 100.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_registered_module_needs_its_input_size():
    with pytest.raises(SSKTError, match=r"register_model\('x'\): set input_size"):
        sskt.register_model("x", small_classifier())


# -- your own dataset ---------------------------------------------------------------------------------------


class ColourSquares(torch.utils.data.Dataset):
    """PIL images of mixed sizes and modes: class 0 red, 1 green, 2 blue."""

    classes = ["red", "green", "blue"]

    def __init__(self, n: int, shade: int = 0) -> None:
        self.n, self.shade = n, shade  # every image its own pixels; another shade for the test split

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        size = [(24, 16), (10, 10), (40, 30)][i % 3]
        base = [(255, 0, 0), (0, 255, 0), (0, 0, 255)][i % 3]
        colour = tuple(v - i // 3 if v else self.shade for v in base)
        return Image.new("RGB", size, colour), i % 3


def test_a_torch_dataset_of_pil_images_of_mixed_sizes_is_a_dataset_by_name():
    sskt.register_dataset("squares", {"train": ColourSquares(30), "test": ColourSquares(9, shade=1)}, image_size=12)
    splits = load_data(DataConfig(dataset="squares"))
    assert tuple(splits.train.images.shape) == (30, 3, 12, 12) and tuple(splits.test.images.shape) == (9, 3, 12, 12)
    assert splits.classes == ["red", "green", "blue"]
    assert splits.train.images[1, :, 6, 6].tolist() == [0, 255, 0] and splits.train.targets[:3].tolist() == [0, 1, 2]
    few = load_data(DataConfig(dataset="squares", per_class=2, val_per_class=3, unlabeled="rest"))
    assert torch.bincount(few.train.targets).tolist() == [2, 2, 2]
    assert len(few.val) == 9 and len(few.unlabeled) == 30 - 6 - 9
    assert tuple(load_data(DataConfig(dataset="squares", image_size=20)).test.images.shape) == (9, 3, 20, 20)


def test_a_list_of_image_files_and_labels_is_decoded_by_the_folder_policy(tmp_path: Path):
    pairs = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        grey = Image.new("L", (30, 20), 40 if i % 2 else 220)  # grey files, wider than tall
        grey.save(path)
        pairs.append((str(path), "dark" if i % 2 else "light"))
    tests = []
    for i in range(4):
        path = tmp_path / f"test{i}.png"
        Image.new("L", (30, 20), 41 if i % 2 else 221).save(path)  # no test image in training
        tests.append((str(path), "dark" if i % 2 else "light"))
    sskt.register_dataset("files", {"train": pairs, "test": tests}, image_size=10)
    splits = load_data(DataConfig(dataset="files", per_class=3))
    assert splits.classes == ["dark", "light"] and tuple(splits.train.images.shape) == (6, 3, 10, 10)
    dark = splits.train.images[splits.train.targets == 0]
    assert (dark == 40).all()  # RGB, resized and cropped to the centre square


def test_tensors_of_different_sizes_keep_their_centre_square():
    wide = torch.arange(16, dtype=torch.uint8).repeat(1, 8, 1)  # (1, 8, 16): column j holds j
    square = torch.full((1, 8, 8), 7, dtype=torch.uint8)
    splits = sskt.image_splits([(wide, 0), (square, 1)], [(square, 1)])
    assert tuple(splits.train.images.shape) == (2, 1, 8, 8)  # the shorter side, 8, kept
    assert torch.equal(splits.train.images[0], wide[:, :, 4:12])


def test_normalised_images_are_refused_with_the_fix():
    normalised = [(torch.randn(3, 8, 8) * 2, 0)]
    with pytest.raises(SSKTError, match=r"must be in \[0, 1\].*drop transforms.Normalize"):
        sskt.image_splits(normalised, normalised)


def test_a_fit_on_a_registered_torch_dataset_writes_its_result(tmp_path: Path):
    from sklearn.datasets import load_digits

    d = load_digits()

    class Digits(torch.utils.data.Dataset):
        def __init__(self, rows: np.ndarray) -> None:
            self.rows = rows

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            r = self.rows[i]
            return (d.images[r] * 15).astype(np.uint8)[:, :, None], int(d.target[r])  # numpy (H, W, 1)

    rows = np.random.default_rng(0).permutation(len(d.target))
    sskt.register_dataset("np_digits", {"train": Digits(rows[:400]), "test": Digits(rows[400:600])})
    result = run(tmp_path, data={"dataset": "np_digits", "per_class": 10}, train={"accelerator": "cpu", "epochs": 2})
    record = json.loads((result.out_dir / "result.json").read_text())
    assert record["train_images"] == 100 and record["test_images"] == 200
    assert 0.0 <= result.final <= 100.0


# -- the page's examples ------------------------------------------------------------------------------------


def test_the_examples_in_docs_python_api_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert len(blocks) >= 4, f"{DOC}: expected the examples of the page"
    monkeypatch.chdir(tmp_path)  # their runs write under runs/
    session: dict = {"__name__": "python_api_page"}  # one session: a block may use what an earlier one defined
    for i, block in enumerate(blocks):
        block = block.replace('"train": {', '"train": {"accelerator": "cpu", ')
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            exec(compile(block, f"{DOC}:block{i}", "exec"), session)
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"own-source", "own-features", "own-data"}
