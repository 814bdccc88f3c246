"""Multi-label and video targets through the normal engine: registered datasets, engine mAP, 3D SSKT step."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sskt.data import DataConfig, load_data
from sskt.engine.lit import MethodModule
from sskt.errors import SSKTError
from sskt.evaluation.scoring import evaluate_model
from sskt.methods.sskt import SSKT, SSKTOptions
from sskt.metrics import classwise_map
from sskt.models.factory import create_model, model_spec
from sskt.models.target import TargetNetwork
from sskt.sources.bank import SourceBank
from sskt.sources.frames import frames_for_source
from sskt.sources.source import Source

from testutils import CIFAR_JPEG, need
from test_video import _frame_ids, _frames, ucf  # noqa: F401  (the UCF101-layout fixture)
from test_voc import VOC_CLASSES, _make_voc


# ----------------------------------------------------------------------------- datasets


def test_voc2007_dataset_multilabel_with_ignore(tmp_path: Path) -> None:
    _make_voc(tmp_path)
    s = load_data(DataConfig(dataset="voc2007", root=str(tmp_path / "VOCdevkit"), image_size=16))
    assert s.multilabel and s.classes == list(VOC_CLASSES)
    assert s.train.images.shape == (2, 3, 16, 16) and s.test.images.shape == (1, 3, 16, 16)
    assert s.train.targets.dtype == torch.float32 and s.train.targets.shape == (2, 20)
    cat = VOC_CLASSES.index("cat")
    assert bool(s.train.extras["ignore"][1, cat]) and s.train.targets[1, cat] == 0  # difficult-only cat
    batch = s.train.__getitems__([0, 1])
    assert batch["ignore"].shape == (2, 20)  # the mask travels with the batch to the metric


def test_voc2007_rejects_per_class(tmp_path: Path) -> None:
    _make_voc(tmp_path)
    with pytest.raises(SSKTError, match="multi-label"):
        load_data(DataConfig(dataset="voc2007", root=str(tmp_path), image_size=16, per_class=1))


def test_multilabel_csv_dataset(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for name, colour in (("a.png", (10, 20, 30)), ("b.png", (10, 20, 30)), ("c.png", (200, 20, 30))):
        Image.new("RGB", (10, 10), colour).save(tmp_path / "img" / name)  # the test image is not a training one
    (tmp_path / "train.csv").write_text("image,labels\na.png,cat dog\nb.png,dog\n")
    (tmp_path / "test.csv").write_text("image,labels\nc.png,cat\n")
    opts = {"train": {"csv": "train.csv", "image_dir": "img"}, "test": {"csv": "test.csv", "image_dir": "img"}}
    s = load_data(DataConfig(dataset="multilabel-csv", root=str(tmp_path), image_size=8, options=opts))
    assert s.multilabel and s.classes == ["cat", "dog"]
    assert s.train.targets.tolist() == [[1.0, 1.0], [0.0, 1.0]] and s.test.targets.tolist() == [[1.0, 0.0]]
    with pytest.raises(SSKTError, match="options.test"):
        load_data(DataConfig(dataset="multilabel-csv", root=str(tmp_path), options={"train": opts["train"]}))


def _tiny_imagefolder(root: Path, per_class: int = 3) -> Path:
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog", "ship")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (80 * c, 10 * i, 0)).save(d / f"{i}.png")
    return root


def test_cifar_mosaic_dataset_seeded_and_disjoint(tmp_path: Path) -> None:
    root = _tiny_imagefolder(tmp_path)
    cfg = DataConfig(dataset="cifar-mosaic", root=str(root), options={"train_mosaics": 12, "test_mosaics": 5})
    a, b = load_data(cfg), load_data(cfg)
    assert a.multilabel and a.classes == ["cat", "dog", "ship"]
    assert a.train.images.shape == (12, 3, 16, 16) and a.test.targets.shape == (5, 3)
    assert a.train.images.equal(b.train.images) and a.train.targets.equal(b.train.targets)  # seeded
    assert ((a.train.targets.sum(1) >= 1) & (a.train.targets.sum(1) <= 3)).all()
    assert not a.train.extras["ignore"].any()
    with pytest.raises(SSKTError, match="unknown data.options"):
        load_data(DataConfig(dataset="cifar-mosaic", root=str(root), options={"mosaics": 3}))


def test_ucf101_dataset_decodes_clips_with_labels(ucf, tmp_path: Path) -> None:  # noqa: F811
    root, lists = ucf
    opts = {"split_dir": str(lists), "clip_len": 4, "size": None, "crop": None, "test_clips": 2}
    s = load_data(DataConfig(dataset="ucf101", root=str(root), options=opts))
    assert not s.multilabel and s.classes == ["ApplyEyeMakeup", "Archery", "Basketball"]
    assert s.train.images.shape == (3, 3, 4, 16, 20) and s.train.targets.tolist() == [0, 1, 2]
    assert s.test.images.shape == (4, 3, 4, 16, 20) and s.test.targets.tolist() == [1, 1, 2, 2]
    assert s.test.extras["video"].tolist() == [0, 0, 1, 1]
    assert _frame_ids(s.test.images[0]) == [0, 1, 2, 3] and _frame_ids(s.test.images[1]) == [8, 9, 10, 11]
    assert _frame_ids(s.train.images[2]) == [0, 1, 2, 0]  # 3-frame video, loop-padded
    with pytest.raises(SSKTError, match="split_dir"):
        load_data(DataConfig(dataset="ucf101", root=str(root)))


def test_hmdb51_dataset(tmp_path: Path) -> None:
    root, lists = tmp_path / "jpg", tmp_path / "splits"
    lists.mkdir()
    for cls, videos in {"clap": ["a", "b"], "wave": ["c", "d"]}.items():
        for v in videos:
            _frames(root / cls / v, 5)
        (lists / f"{cls}_test_split1.txt").write_text(f"{videos[0]}.avi 1\n{videos[1]}.avi 2\n")
    opts = {"split_dir": str(lists), "clip_len": 2, "size": None, "crop": None}
    s = load_data(DataConfig(dataset="hmdb51", root=str(root), options=opts))
    assert s.classes == ["clap", "wave"] and s.train.targets.tolist() == [0, 1] and len(s.test) == 2


def test_moving_cifar_dataset(tmp_path: Path) -> None:
    root = _tiny_imagefolder(tmp_path)
    opts = {"train_clips": 6, "test_clips": 4, "canvas": 16, "frames": 4, "motions": ["left", "right"]}
    s = load_data(DataConfig(dataset="moving-cifar", root=str(root), options=opts))
    assert s.classes == ["left", "right"] and s.train.images.shape == (6, 3, 4, 16, 16)
    assert s.train.images.dtype == torch.uint8 and len(s.test) == 4


# ----------------------------------------------------------------------------- engine metric


def _module(num_classes: int, multilabel: bool) -> MethodModule:
    from sskt.config import TrainConfig
    from sskt.methods.scratch import Scratch, ScratchOptions

    target = TargetNetwork("cifar_resnet20", num_classes)
    return MethodModule(Scratch(target, ScratchOptions(), multilabel), TrainConfig(), num_classes=num_classes,
                        multilabel=multilabel, classes=[f"c{i}" for i in range(num_classes)])


def test_engine_multilabel_metric_is_classwise_map_with_ignore() -> None:
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.9]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    ignore = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    # By hand. Class 0 without the ignored row 1: ranking 0.9(+) 0.3(+) 0.1(-) -> AP 1.
    # Class 1: ranking 0.9(+) 0.7(+) 0.6(-) 0.2(-) -> AP 1. Counting row 1 as a negative of class 0
    # would give ranking 0.9(+) 0.8(-) 0.3(+) -> AP (1 + 2/3) / 2.
    module = _module(2, multilabel=True)
    module.metrics["test"].update(scores, targets, ignore)
    result = module.metrics["test"].compute()
    assert result["map"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(classwise_map(scores, targets, ignore)[0])
    module.metrics["test"].reset()
    module.metrics["test"].update(scores, targets)
    assert module.metrics["test"].compute()["per_class"][0] == pytest.approx((1 + 2 / 3) / 2)
    # The legacy score is a separate number (per image), not the mAP.
    assert "legacy_samplewise_ap" in result


def test_engine_single_label_metric_unchanged() -> None:
    import torchmetrics

    module = _module(3, multilabel=False)
    assert module.metric_name == "acc"
    # Top-1 as the mean of per-image correctness: the number micro-averaged MulticlassAccuracy gives.
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(50, 3, generator=g), torch.randint(0, 3, (50,), generator=g)
    metric = module.metrics["test"]
    metric.update((logits.argmax(dim=1) == target).float())
    reference = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")(logits, target)
    assert float(metric.compute()) == pytest.approx(float(reference))


def test_evaluate_model_uses_ignore_mask() -> None:
    from sskt.data.tensor_dataset import ImageTensorDataset

    class Fixed(torch.nn.Module):
        def __init__(self, scores: torch.Tensor) -> None:
            super().__init__()
            self.scores = scores

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scores[: x.shape[0]]

    scores = torch.tensor([[0.9], [0.8], [0.3]])
    targets = torch.tensor([[1.0], [0.0], [1.0]])
    data = ImageTensorDataset(torch.zeros(3, 3, 2, 2, dtype=torch.uint8), targets,
                              {"ignore": torch.tensor([[False], [True], [False]])})
    assert evaluate_model(Fixed(scores), data, multilabel=True) == pytest.approx(100.0)


# ----------------------------------------------------------------------------- video targets + 2D sources


def test_video_models_registered_with_stages() -> None:
    for name in ("resnet3d_18", "resnet3d_18b", "r3d_18", "mc3_18", "r2plus1d_18"):
        spec = model_spec(name)
        assert spec.stages == ("layer1", "layer2", "layer3", "layer4") and spec.input_size == 112


def test_frames_for_source_centre_and_mean() -> None:
    clips = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(2, 3, 8, 4, 4).contiguous()
    clips[1] += 100  # clip 1 is distinguishable from clip 0
    x, regroup = frames_for_source(clips, "centre")
    assert x.shape == (2, 3, 4, 4) and x[0, 0, 0, 0] == 4 and x[1, 0, 0, 0] == 104
    assert regroup(torch.ones(2, 5)).equal(torch.ones(2, 5))
    x, regroup = frames_for_source(clips, "mean4")
    assert x.shape == (8, 3, 4, 4) and x[:4, 0, 0, 0].tolist() == [1, 3, 5, 7]  # centres of 4 segments
    assert x[4:, 0, 0, 0].tolist() == [101, 103, 105, 107]
    logits = x[:, :1, 0, 0].repeat(1, 2)  # a toy source: logit = grey level
    assert regroup(logits).tolist() == [[4.0, 4.0], [104.0, 104.0]]
    x, _ = frames_for_source(clips, "mean")
    assert x.shape == (16, 3, 4, 4)
    for bad in ("mean9", "middle", "meanx"):
        with pytest.raises(SSKTError, match="frames"):
            frames_for_source(clips, bad)


def test_source_bank_on_clips_renormalises_per_source() -> None:
    net = create_model("cifar_resnet20", 10).eval()
    src = Source("s", net, 10, input_size=16, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), frames="mean2")
    clips = torch.rand(3, 3, 4, 8, 8)
    got = SourceBank([src])(clips)["s"]
    with torch.no_grad():
        frames = clips[:, :, [1, 3]].transpose(1, 2).reshape(6, 3, 8, 8)
        want = src(frames).view(3, 2, 10).mean(1)  # Source.forward resizes and normalises itself
    assert got.shape == (3, 10) and torch.allclose(got, want, atol=1e-5)


@pytest.fixture()
def one_thread():
    # Tiny 3D convolutions are slower with several threads on a busy machine (oversubscription).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sskt_step_on_3d_target_with_2d_source(one_thread) -> None:
    torch.manual_seed(0)
    target = TargetNetwork("resnet3d_18", 5)  # built once (33M parameters), shared by both source paths
    example = torch.rand(2, 3, 4, 16, 16)  # small clips: the test checks wiring, not learning
    batch = {"image": torch.rand(3, 3, 4, 16, 16), "target": torch.tensor([0, 1, 2]), "index": torch.arange(3)}
    for frames in ("centre", "mean2"):
        src = Source("cifar", create_model("cifar_resnet20", 10), 10, input_size=16, frames=frames)
        method = SSKT(target, [src], SSKTOptions(sources=[{"name": "cifar"}], source_precision="fp32"), example)
        head = method.heads["cifar"]
        assert isinstance(head.branches[0][0], torch.nn.Conv3d)  # 3D transfer module on 5-D stage maps
        target.zero_grad(set_to_none=True)
        out = method.training_step(batch)
        assert out.logits.shape == (3, 5) and sorted(out.losses) == ["aux/cifar", "target"]
        total = sum(out.losses.values())
        assert torch.isfinite(total)
        total.backward()
        assert head.fc.weight.grad is not None and target.model.conv1.weight.grad is not None
        assert all(p.grad is None for p in src.parameters())  # the source stays frozen


# ----------------------------------------------------------------------------- real data (../shared)


def test_cifar_mosaic_on_shared_cifar() -> None:
    root = need(CIFAR_JPEG)
    s = load_data(DataConfig(dataset="cifar-mosaic", root=str(root), per_class=5, test_per_class=5,
                             options={"train_mosaics": 50, "test_mosaics": 20}))
    assert s.train.images.shape == (50, 3, 64, 64) and len(s.classes) == 10
    tiles = s.train.images[:, :, :32, :32].float().std()  # real pixels, not blank tiles
    assert tiles > 10
