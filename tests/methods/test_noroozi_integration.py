"""Noroozi et al. 2018 through the engine and CLI: pretext methods, cluster transfer, clustered source, protocols."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from testutils import CIFAR_JPEG, CIFAR_RESNETS, need, tiny_config
from sskt.config import DataConfig, ExperimentConfig, TargetConfig
from sskt.data.datasets import load_data
from sskt.methods import BuildContext, build_method


def _digits(size: int | None = None, per_class: int = 10) -> tuple[torch.Tensor, BuildContext]:
    splits = load_data(DataConfig(dataset="digits", per_class=per_class))
    x = splits.train.images.float() / 255
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    ctx = BuildContext(num_classes=10, input_shape=tuple(x.shape[1:]), multilabel=False,
                       target=TargetConfig(arch="cifar_resnet20"), train_data=splits.train, test_data=splits.test)
    return x, ctx


def test_rotation_step_learns_on_digits() -> None:
    torch.manual_seed(0)
    images, ctx = _digits()
    method = build_method({"name": "rotation", "all_rotations": True}, ctx)
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    batch = {"image": images[:24], "target": torch.zeros(24, dtype=torch.long)}
    losses = []
    for _ in range(10):
        out = method.training_step(batch)
        assert out.targets is not None and out.targets.shape == out.logits.shape[:1]
        loss = sum(out.losses.values())
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    logits, labels = method.evaluation_batch({"image": images[:8], "target": torch.zeros(8, dtype=torch.long)})
    assert logits.shape == (32, 4) and labels.tolist() == [k for k in range(4) for _ in range(8)]


def test_jigsaw_plus_plus_step_and_evaluation() -> None:
    torch.manual_seed(0)
    images, ctx = _digits(size=24)
    method = build_method({"name": "jigsaw++", "permutations": 10, "hidden": 64, "tile_dim": 32}, ctx)
    assert method.puzzles.num_permutations == 10 and method.puzzles.max_replaced == 2
    out = method.training_step({"image": images[:16]})
    assert out.logits.shape == (16, 10) and torch.isfinite(out.losses["jigsaw"])
    out.losses["jigsaw"].backward()
    assert method.target.model.conv1.weight.grad is not None  # the trunk is the target network
    batch = {"image": images[:8], "index": torch.arange(8)}
    a, la = method.eval().evaluation_batch(batch)
    b, lb = method.evaluation_batch(batch)
    assert torch.equal(la, lb) and torch.allclose(a, b)  # same puzzles at every evaluation


def test_cluster_transfer_end_to_end_on_digits(tmp_path: Path) -> None:
    from sskt.engine.run import fit

    raw = tiny_config(tmp_path, data={"per_class": 20, "test_per_class": 15},
                      method={"name": "cluster-transfer", "teacher": "hog", "hog_cell": 4, "k": 4,
                              "cache_dir": str(tmp_path / "clusters")},
                      train={"epochs": 4, "batch_size": 20, "lr": 0.05, "eval_every": 4})
    result = fit(ExperimentConfig.from_dict(raw))
    clusters = result.record["clusters"]
    assert clusters["num_clusters"] == 4 and sum(clusters["sizes"]) == 200 and clusters["nmi"] > 0.2
    assert list((tmp_path / "clusters").glob("kmeans-*.pt")) and list((tmp_path / "clusters").glob("features-*.pt"))
    chance = 100.0 * max(clusters["sizes"]) / 200
    assert result.final > chance + 5, (result.final, chance)  # the student learned the pseudo-label task


def test_clustered_source_soft_labels_in_sskt_step(tmp_path: Path) -> None:
    from sskt.cluster.kmeans import centroid_logits
    from sskt.cluster.teacher import load_teacher

    torch.manual_seed(0)
    images, ctx = _digits()
    source = {"name": "hog", "kind": "clustered", "temperature": 1.0,
              "options": {"teacher": "hog", "hog_cell": 4, "k": 6, "temperature": 0.1,
                          "data": {"dataset": "digits", "per_class": 20}, "cache_dir": str(tmp_path)}}
    method = build_method({"name": "sskt", "sources": [source], "source_precision": "fp32"}, ctx)
    src = method.sources[0]
    assert src.num_classes == 6
    batch = {"image": images[:20], "target": ctx.train_data.targets[:20]}
    soft = torch.softmax(method.soft_labels(batch)["hog"], dim=1)
    assert torch.allclose(soft.sum(1), torch.ones(20), atol=1e-5)
    head = src.network
    f = head.projection(load_teacher("hog", hog_cell=4)(images[:20]))
    nearest = (-centroid_logits(f, head.centroids)).argmin(1)
    assert torch.equal(soft.argmax(1), nearest)
    out = method.training_step(batch)
    assert set(out.losses) == {"target", "aux/hog"} and torch.isfinite(out.losses["aux/hog"])


def test_linear_probe_random_vs_trained_resnet20() -> None:
    from sskt.evaluation.probes import linear_probe
    from sskt.cluster.features import extract_features
    from sskt.models.target import TargetNetwork
    from sskt.models.weights import extract_state_dict, read_checkpoint

    weights = need(CIFAR_RESNETS[20])
    need(CIFAR_JPEG)
    splits = load_data(DataConfig(dataset="imagefolder", root=str(CIFAR_JPEG), per_class=30, test_per_class=20))
    scores = {}
    for name in ("random", "trained"):
        torch.manual_seed(0)
        net = TargetNetwork("cifar_resnet20", 10)
        if name == "trained":
            net.model.load_state_dict(extract_state_dict(read_checkpoint(weights)))
        tr = extract_features(net, splits.train.images, "model.layer3")
        te = extract_features(net, splits.test.images, "model.layer3")
        scores[name] = linear_probe(tr, splits.train.targets, te, splits.test.targets).test_top1
    assert scores["trained"] > scores["random"] + 0.25, scores


def test_cli_pretext_then_evaluate_knn(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sskt.cli import main

    run = tmp_path / "rot"
    common = ["data.dataset=digits", "data.per_class=5", "data.test_per_class=5", "data.crop_padding=1",
              "train.epochs=1", "train.batch_size=25", "train.progress_bar=false", "train.tensorboard=false"]
    assert main(["pretext", "--task", "rotation", *common, f"out_dir={run}"]) == 0
    assert json.loads((run / "result.json").read_text())["config"]["method"]["name"] == "rotation"
    capsys.readouterr()
    assert main(["evaluate", "--protocol", "knn", str(run / "checkpoints" / "last.ckpt"), "data.per_class=10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"] == "knn" and set(out["layers"]) == {"layer1", "layer2", "layer3"}
    assert all(0 <= v["top1"] <= 100 for v in out["layers"].values()) and out["train_images"] == 100
    # The main protocol would score the rotation head against the digit labels: refused, with what works.
    assert main(["evaluate", str(run / "checkpoints" / "last.ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rotation's own task" in err[0] and "--protocol linear" in err[0]


def test_cluster_nmi_leaves_out_unlabelled_rows() -> None:
    import numpy as np

    from sskt.cluster.kmeans import cluster_stats

    # The labelled rows match the clusters exactly; the two unlabelled rows (-1) would break that.
    stats = cluster_stats(np.array([0, 0, 2, 2, 1, 0]), k=3, labels=np.array([1, 1, 0, 0, -1, -1]))
    assert stats.sizes.tolist() == [3, 1, 2] and stats.nmi == pytest.approx(1.0)
    assert cluster_stats(np.array([0, 1]), k=2, labels=np.array([-1, -1])).nmi is None


def test_cluster_transfer_clusters_and_learns_from_an_unlabelled_folder(tmp_path: Path) -> None:
    """A user's folder of unlabelled images (no class subfolders) joins the labelled ones: every image is
    clustered and trained on; the NMI is measured on the labelled images only."""
    import numpy as np
    from PIL import Image

    from sskt.engine.run import fit

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    digits = load_data(DataConfig(dataset="digits", per_class=20)).train.images  # images of the same kind
    for i, img in enumerate(digits[:60]):
        Image.fromarray(img.permute(1, 2, 0).numpy().astype(np.uint8)).save(folder / f"{i:03d}.png")
    raw = tiny_config(tmp_path, data={"per_class": 10, "test_per_class": 15, "unlabeled": str(folder),
                                      "unlabeled_ratio": 1.0},
                      method={"name": "cluster-transfer", "teacher": "hog", "hog_cell": 4, "k": 4,
                              "cache_dir": str(tmp_path / "clusters")},
                      train={"epochs": 6, "batch_size": 20, "lr": 0.05, "eval_every": 6})
    result = fit(ExperimentConfig.from_dict(raw))
    clusters = result.record["clusters"]
    assert result.record["unlabeled_images"] == 60
    assert sum(clusters["sizes"]) == 100 + 60  # the unlabelled images were clustered too
    assert clusters["nmi"] is not None and 0.2 < clusters["nmi"] <= 1.0
    step = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step == 6 * (160 // 20)  # no label is read: an epoch is one pass over all 160 images
    chance = 100.0 * max(clusters["sizes"]) / 160
    assert result.final > chance + 5, (result.final, chance)


def test_pretext_methods_accept_unlabelled_images(tmp_path: Path) -> None:
    from sskt.engine.run import fit

    raw = tiny_config(tmp_path, data={"unlabeled": "rest", "unlabeled_count": 40},
                      method={"name": "rotation"})
    assert fit(ExperimentConfig.from_dict(raw)).record["unlabeled_images"] == 40
    step = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step == 140 // 20
