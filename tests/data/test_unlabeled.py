"""Unlabelled images (data.unlabeled): the mixed batch sampler, losses that never see their (missing)
labels, the soft-label cache over them, folders of other sizes, and bit-exact resumption."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sskt.config import DataConfig, ExperimentConfig
from sskt.data.datasets import load_data
from sskt.data.sampling import MixedBatchSampler
from sskt.engine.run import fit
from sskt.errors import SSKTError
from sskt.methods.base import target_loss_fn
from sskt.methods.kd import KD, KDOptions
from sskt.methods.sskt import SSKT, SSKTOptions
from sskt.models.factory import create_model
from sskt.models.target import TargetNetwork
from sskt.sources.source import Source

from testutils import CrashInEpoch, tiny_config

# ------------------------------------------------------------------------------------------- sampler


def _epoch(sampler: MixedBatchSampler, epoch: int) -> list[list[int]]:
    sampler.sampler.set_epoch(epoch)
    return list(sampler)


def test_every_batch_mixes_labelled_and_unlabelled_images():
    s = MixedBatchSampler(n_labeled=23, n_unlabeled=40, batch_size=5, ratio=1.5, seed=3)
    batches = _epoch(s, 0)
    assert len(batches) == len(s) == 23 // 5
    for b in batches:
        assert sum(i < 23 for i in b) == 5
        assert sum(i >= 23 for i in b) == round(5 * 1.5)
        assert all(0 <= i < 63 for i in b)
    labelled = [i for b in batches for i in b if i < 23]
    assert len(set(labelled)) == len(labelled) == 20  # no labelled image twice in an epoch


def test_unlabelled_stream_shows_every_image_before_repeating_across_epochs():
    n_u = 37
    s = MixedBatchSampler(n_labeled=20, n_unlabeled=n_u, batch_size=4, ratio=2.0, seed=1)  # 5 x 8 = 40 per epoch
    stream = [i for e in range(4) for b in _epoch(s, e) for i in b if i >= 20]
    assert len(stream) == 160
    for start in range(0, len(stream) - n_u + 1, n_u):  # each consecutive cycle of 37 is a permutation
        assert sorted(stream[start:start + n_u]) == list(range(20, 20 + n_u))
    assert len(set(stream[:n_u])) == n_u


def test_batches_are_a_pure_function_of_seed_and_epoch():
    def make(seed=0):
        return MixedBatchSampler(n_labeled=30, n_unlabeled=50, batch_size=6, ratio=1.0, seed=seed)

    a, b = make(), make()
    assert _epoch(a, 2) == _epoch(b, 2)
    assert _epoch(a, 1) == _epoch(make(), 1)  # the epoch alone decides, not what came before
    assert _epoch(a, 1) != _epoch(a, 2)
    assert _epoch(a, 0) != _epoch(make(seed=1), 0)
    assert list(a) == list(a)  # iterating twice in one epoch gives the same batches


def test_two_ranks_take_disjoint_labelled_halves_of_the_epoch():
    kw = dict(n_labeled=40, n_unlabeled=40, batch_size=5, ratio=1.0, seed=4)
    single = _epoch(MixedBatchSampler(**kw), 3)
    r0 = _epoch(MixedBatchSampler(**kw, rank=0, world_size=2), 3)
    r1 = _epoch(MixedBatchSampler(**kw, rank=1, world_size=2), 3)
    assert len(r0) == len(r1) == 4 and len(single) == 8
    lab0 = {i for b in r0 for i in b if i < 40}
    lab1 = {i for b in r1 for i in b if i < 40}
    assert not lab0 & lab1 and lab0 | lab1 == set(range(40))
    un0 = {i for b in r0 for i in b if i >= 40}
    un1 = {i for b in r1 for i in b if i >= 40}
    assert not un0 & un1 and un0 | un1 == set(range(40, 80))  # one pass of the stream, shared out
    # the ranks split the global order the one-process run uses, step by step
    assert [b for pair in zip(r0, r1) for b in pair] == single


# -------------------------------------------------------------------------------------------- losses


def _mixed_batch(n_lab: int = 4, n_unl: int = 3, side: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = n_lab + n_unl
    return {"image": torch.rand(n, 3, side, side, generator=g),
            "target": torch.cat([torch.arange(n_lab) % 10, torch.full((n_unl,), -1)]),
            "labeled": torch.cat([torch.ones(n_lab, dtype=torch.bool), torch.zeros(n_unl, dtype=torch.bool)]),
            "index": torch.arange(n)}


def test_target_loss_counts_only_labelled_rows():
    batch = _mixed_batch()
    logits = torch.randn(7, 10, requires_grad=True)
    loss = target_loss_fn("auto", False)(logits, batch)
    assert torch.allclose(loss, F.cross_entropy(logits[:4], batch["target"][:4]))
    loss.backward()
    assert torch.equal(logits.grad[4:], torch.zeros(3, 10)) and logits.grad[:4].abs().sum() > 0
    focal = target_loss_fn("focal", False)(logits, batch)
    assert torch.allclose(focal, target_loss_fn("focal", False)(logits[:4], {"target": batch["target"][:4]}))
    # multi-label: unlabelled rows are all-zero targets and must not count as "no class present"
    ml = {"target": torch.cat([torch.eye(4, 5), torch.zeros(3, 5)]), "labeled": batch["labeled"]}
    ml_logits = torch.randn(7, 5, requires_grad=True)
    bce = target_loss_fn("auto", True)(ml_logits, ml)
    assert torch.allclose(bce, target_loss_fn("auto", True)(ml_logits[:4], {"target": ml["target"][:4]}))


def _grads(method, batch, name):
    """Gradient of loss ``name`` w.r.t. the input images (model in eval mode: rows are independent)."""
    method.train(False)
    image = batch["image"].clone().requires_grad_(True)
    out = method.training_step({**batch, "image": image})
    out.losses[name].backward()
    return image.grad, out


def _source(classes: int) -> Source:
    torch.manual_seed(0)
    net = create_model("cifar_resnet20", classes)
    with torch.no_grad():
        net.linear.weight.mul_(0.02)
    return Source("s", net, classes, input_size=8)


def test_sskt_auxiliary_loss_learns_from_unlabelled_images_and_the_target_loss_does_not():
    batch = _mixed_batch()
    torch.manual_seed(1)
    m = SSKT(TargetNetwork("cifar_resnet20", 10), [_source(20)], SSKTOptions(sources=[{"name": "s"}]),
             example=torch.rand(2, 3, 8, 8))
    g_target, out = _grads(m, batch, "target")
    assert out.logits.shape == (7, 10) and torch.isfinite(out.losses["target"])
    assert torch.equal(g_target[4:], torch.zeros_like(g_target[4:])) and g_target[:4].abs().sum() > 0
    m.zero_grad()
    g_aux, _ = _grads(m, batch, "aux/s")
    assert all(g_aux[i].abs().sum() > 0 for i in range(4, 7))
    # the target term equals the labelled rows alone
    alone = {k: v[:4] for k, v in batch.items()}
    m.train(False)
    with torch.no_grad():
        assert torch.allclose(m.training_step(batch).losses["target"], m.training_step(alone).losses["target"],
                              atol=1e-6)


def test_kd_soft_term_uses_unlabelled_images_and_the_hard_term_does_not():
    batch = _mixed_batch()
    torch.manual_seed(1)
    m = KD(TargetNetwork("cifar_resnet20", 10), _source(10), KDOptions(teacher={"name": "s"}))
    g_hard, _ = _grads(m, batch, "target")
    assert torch.equal(g_hard[4:], torch.zeros_like(g_hard[4:])) and g_hard[:4].abs().sum() > 0
    m.zero_grad()
    g_soft, _ = _grads(m, batch, "kd")
    assert all(g_soft[i].abs().sum() > 0 for i in range(4, 7))


# ----------------------------------------------------------------------------------------- end to end

SOURCE = {"name": "s", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}


def _sskt_config(tmp_path: Path, cache_dir: Path | None = None, **data) -> dict:
    method = {"name": "sskt", "head": "linear", "alpha": 0.5, "sources": [SOURCE]}
    if cache_dir is not None:
        method["cache"] = {"mode": "exact", "views": 2, "dir": str(cache_dir), "verify": 2}
    return tiny_config(tmp_path, data=data, method=method)


def _cache_rows(path: Path) -> int:
    head = path.read_bytes()[:4096]
    length, _ = struct.unpack("<II", head[8:16])
    return json.loads(head[16:16 + length])["n"]


def test_fit_with_unlabelled_images_caches_them_and_keeps_the_metrics(tmp_path):
    cache = tmp_path / "cache"
    raw = _sskt_config(tmp_path / "u", cache, unlabeled="rest", unlabeled_count=60)
    result = fit(ExperimentConfig.from_dict(raw))
    files = list(cache.glob("*.sskc"))
    assert len(files) == 1 and _cache_rows(files[0]) == 100 + 60  # labelled + unlabelled rows
    record = json.loads((tmp_path / "u" / "run" / "result.json").read_text())
    assert record["final"] == pytest.approx(result.final)  # what fit returns is what it wrote
    assert record["unlabeled_images"] == 60 and record["train_images"] == 100

    plain = fit(ExperimentConfig.from_dict(_sskt_config(tmp_path / "p")))
    assert plain.record["unlabeled_images"] == 0
    assert record["test_images"] == plain.record["test_images"] == 540
    assert [sorted(h) for h in record["history"]] == [sorted(h) for h in plain.history]
    steps = [torch.load(r / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
             for r in (tmp_path / "u" / "run", tmp_path / "p" / "run")]
    assert steps == [100 // 20, 100 // 20]  # an epoch is still one pass over the labelled images


@pytest.mark.parametrize("method", [{"name": "scratch"}, {"name": "dml"}])
def test_methods_without_an_unlabelled_loss_refuse_unlabelled_images(tmp_path, method):
    raw = tiny_config(tmp_path, data={"unlabeled": "rest"}, method=method)
    with pytest.raises(SSKTError, match="does not learn from unlabelled images") as err:
        fit(ExperimentConfig.from_dict(raw))
    assert "\n" not in str(err.value) and method["name"] in str(err.value)


def test_unlabelled_folder_of_another_size_is_resized_to_the_training_images(tmp_path):
    folder = tmp_path / "unl" / "nested"
    folder.mkdir(parents=True)
    colours = [(10 * i, 100, 250 - 10 * i) for i in range(12)]
    for i, c in enumerate(colours):
        Image.fromarray(np.full((12, 12, 3), c, np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    splits = load_data(DataConfig(dataset="digits", per_class=10, unlabeled=str(tmp_path / "unl")))
    assert splits.unlabeled.dtype == torch.uint8
    assert tuple(splits.unlabeled.shape) == (12, *splits.train.images.shape[1:]) == (12, 3, 8, 8)
    for img, c in zip(splits.unlabeled, colours):  # solid colours survive resizing, in file order
        assert img[:, 3, 3].tolist() == list(c)
    counted = load_data(DataConfig(dataset="digits", per_class=10, unlabeled=str(tmp_path / "unl"),
                                   unlabeled_count=5))
    assert len(counted.unlabeled) == 5

    raw = _sskt_config(tmp_path, unlabeled=str(tmp_path / "unl"))
    result = fit(ExperimentConfig.from_dict(raw))
    assert result.record["unlabeled_images"] == 12


def test_resumed_run_with_unlabelled_images_is_bit_identical(tmp_path):
    cache = tmp_path / "cache"

    def cfg(sub):
        raw = _sskt_config(tmp_path / sub, cache, unlabeled="rest", unlabeled_count=50, unlabeled_ratio=0.5)
        raw["train"].update({"epochs": 3, "schedule": "multistep", "milestones": [1, 2], "gamma": 0.5})
        return ExperimentConfig.from_dict(raw)

    whole = fit(cfg("whole"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg("resumed"), callbacks=[CrashInEpoch(1)])
    ckpt = tmp_path / "resumed" / "run" / "checkpoints" / "last.ckpt"
    assert [h["epoch"] for h in torch.load(ckpt, weights_only=False)["sskt"]["history"]] == [0]
    resumed = fit(cfg("resumed"))
    assert resumed.record["resumed_from"] == str(ckpt)
    assert [h["test_acc"] for h in resumed.history] == [h["test_acc"] for h in whole.history]
    assert resumed.final == whole.final
    a = torch.load(tmp_path / "whole" / "run" / "target.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "run" / "target.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
