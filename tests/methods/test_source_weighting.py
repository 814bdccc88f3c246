"""SSKT's per-source weighting (fixed, gradsim, uncertainty) and its shared transfer trunk."""
import csv
import json
import math

import pytest
import torch

from sskt.config import DataConfig, ExperimentConfig
from sskt.data.datasets import load_data
from sskt.engine.run import fit
from sskt.errors import SSKTError
from sskt.losses import gradient_cosine, kd_loss, uncertainty_weighted
from sskt.methods.base import parse_options
from sskt.methods.source_weighting import SourceWeighting, WeightingOptions
from sskt.methods.sskt import SSKT, SSKTOptions
from sskt.models.factory import create_model
from sskt.models.heads import SharedTransferHeads
from sskt.models.target import TargetNetwork
from sskt.sources.source import Source

from testutils import tiny_config


def test_gradient_cosine_by_hand():
    a = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    b = [torch.tensor([1.0, 2.0]), None]  # None: that parameter gets no gradient from this loss
    # dot = 3, |a| = 5, |b| = sqrt(5)
    assert float(gradient_cosine(a, b)) == pytest.approx(3 / (5 * math.sqrt(5)))
    assert float(gradient_cosine(a, [-x for x in a])) == pytest.approx(-1.0)
    assert float(gradient_cosine([None], [None])) == 0.0  # no gradient at all: no similarity, no NaN


def test_uncertainty_weighted_by_hand():
    loss, s = torch.tensor(0.8), torch.tensor(-0.3)
    assert float(uncertainty_weighted(loss, s)) == pytest.approx(math.exp(0.3) * 0.8 - 0.15)
    # Its minimum over s is at exp(-s) = 1 / (2 * loss): the weight Kendall et al. converge to.
    s = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        uncertainty_weighted(torch.tensor(0.8), s).backward()
        opt.step()
    assert math.exp(-float(s)) == pytest.approx(1 / (2 * 0.8), rel=1e-3)


def _sskt(options: dict, classes=(10, 10)) -> SSKT:
    torch.manual_seed(0)
    target = TargetNetwork("cifar_resnet20", 10)
    sources = [Source(f"s{i}", create_model("cifar_resnet20", k), k, input_size=8) for i, k in enumerate(classes)]
    opts = parse_options(SSKTOptions, {"sources": [{"name": s.name} for s in sources], "source_precision": "fp32",
                                       **options})
    return SSKT(target, sources, opts, example=torch.rand(2, 3, 8, 8))


def test_fixed_weighting_is_alpha_times_the_soft_label_loss():
    m = _sskt({"alpha": 0.3, "temperature": 2.0}).train()
    batch = {"image": torch.rand(4, 3, 8, 8), "target": torch.tensor([0, 1, 2, 3])}
    torch.manual_seed(1)
    out = m.training_step(batch)
    feats = m.target.forward_features(batch["image"])
    teacher = m.soft_labels(batch)
    expected = 0.3 * kd_loss(m.heads["s0"](feats.pooled, feats.stages), teacher["s0"], 2.0)
    assert float(out.losses["aux/s0"]) == pytest.approx(float(expected), rel=1e-5)
    assert out.metrics == {"weight/s0": 0.3, "weight/s1": 0.3}
    assert "weighting.similarity" not in m.state_dict()  # fixed: checkpoints as before


def test_a_left_out_source_weighs_zero_and_a_wrong_name_is_refused():
    w = SourceWeighting(["a", "b"], [1.0, 0.5], WeightingOptions())
    w.leave_out("b")
    losses, weights = w({"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    assert weights == {"a": 1.0, "b": 0.0}
    assert float(losses["b"]) == 0.0 and float(losses["a"]) == 2.0
    with pytest.raises(KeyError, match="no source named 'c'"):
        w.leave_out("c")


def _digits():
    splits = load_data(DataConfig(dataset="digits", per_class=30, crop_padding=0, flip=False))
    return splits.train.images, splits.train.targets


def test_gradsim_switches_off_an_irrelevant_source_and_keeps_a_relevant_one():
    """Source s0 teaches the labels themselves, s1 fixed random noise per image: after some steps s1's weight
    has fallen below s0's and below where it started; every weight stays finite and >= 0."""
    images, labels = _digits()
    m = _sskt({"alpha": 1.0, "weighting": {"mode": "gradsim", "every": 1, "momentum": 0.5}}).train()
    noise = torch.randn(len(labels), 10, generator=torch.Generator().manual_seed(0)) * 3
    relevant = torch.nn.functional.one_hot(labels, 10).float() * 5
    m.soft_labels = lambda batch: {"s0": relevant[batch["index"]], "s1": noise[batch["index"]]}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    history = []
    for _ in range(30):
        idx = torch.randperm(len(labels), generator=g)[:32]
        out = m.training_step({"image": images[idx], "target": labels[idx], "index": idx})
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
        history.append(out.metrics)
    weights = [w for h in history for w in h.values()]
    assert all(math.isfinite(w) and w >= 0 for w in weights)
    # Measured: s0 rises from 0.004 (two random heads) to ~0.25, s1 stays ~0.01.
    late = {n: sum(h[f"weight/{n}"] for h in history[-10:]) / 10 for n in ("s0", "s1")}
    assert late["s0"] > 0.1 and late["s1"] < 0.3 * late["s0"], history[-10:]
    assert int(m.state_dict()["weighting.steps"]) == 30  # its state is in the checkpoint: resume is exact


def test_relative_gradsim_gives_the_best_aligned_source_its_full_alpha():
    from sskt.methods.source_weighting import GATE_FLOOR

    w = SourceWeighting(["a", "b", "c"], [1.0, 1.0, 0.5], WeightingOptions("gradsim", relative=True),
                        gated_in_graph=True)
    w.similarity.copy_(torch.tensor([0.4, -0.2, 0.1]))
    assert w.effective() == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.5 * 0.25})
    assert w.gates() == pytest.approx({"a": 1.0, "b": GATE_FLOOR, "c": 0.25})
    plain = SourceWeighting(["a", "b", "c"], [1.0, 1.0, 0.5], WeightingOptions("gradsim"))
    plain.similarity.copy_(torch.tensor([0.4, -0.2, 0.1]))
    assert plain.effective() == pytest.approx({"a": 0.4, "b": 0.0, "c": 0.05})


def test_uncertainty_weights_stay_finite_and_positive():
    images, labels = _digits()
    m = _sskt({"alpha": 1.0, "weighting": "uncertainty"}).train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    for step in range(5):
        idx = torch.arange(step * 16, step * 16 + 16)
        out = m.training_step({"image": images[idx], "target": labels[idx], "index": idx})
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
        assert all(math.isfinite(w) and w > 0 for w in out.metrics.values())
    assert float(m.weighting.log_variance.abs().sum()) > 0  # learned: the weights moved from alpha


def test_shared_trunk_is_one_set_of_branches_for_all_sources():
    per_source = _sskt({}, classes=(10, 100, 1000, 7))
    shared = _sskt({"transfer_trunk": "shared"}, classes=(10, 100, 1000, 7))
    assert isinstance(shared.heads, SharedTransferHeads)
    count = lambda m: sum(p.numel() for p in m.heads.parameters())  # noqa: E731
    linear = sum(64 * k + k for k in (10, 100, 1000, 7))
    branches = count(per_source) - linear  # four sets of branches
    assert count(shared) == pytest.approx(linear + branches / 4)
    out = shared.train().training_step({"image": torch.rand(4, 3, 8, 8), "target": torch.tensor([0, 1, 2, 3])})
    assert sorted(out.losses) == ["aux/s0", "aux/s1", "aux/s2", "aux/s3", "target"]
    assert all(torch.isfinite(v) for v in out.losses.values())


@pytest.mark.parametrize("options, message", [
    ({"transfer_trunk": "shared", "head": "linear"}, "transfer_trunk: shared needs head: transfer"),
    ({"transfer_trunk": "both"}, "transfer_trunk must be one of"),
    ({"weighting": "learned"}, "method.weighting.mode"),
    ({"weighting": {"mode": "gradsim", "every": 0}}, "every must be >= 1"),
    ({"weighting": {"mode": "uncertainty", "relative": True}}, "relative is for mode gradsim"),
])
def test_bad_options_are_one_clear_line(options, message):
    with pytest.raises(SSKTError, match=message):
        parse_options(SSKTOptions, {"sources": [{"name": "a"}], **options})


def test_fit_logs_each_sources_weight_per_epoch(tmp_path):
    source = {"name": "rnd", "arch": "cifar_resnet20", "num_classes": 5, "input_size": 8}
    raw = tiny_config(tmp_path, method={"name": "sskt", "sources": [source], "alpha": 0.5,
                                        "weighting": {"mode": "gradsim", "every": 2}, "transfer_trunk": "shared"},
                      train={"epochs": 2})
    result = fit(ExperimentConfig.from_dict(raw))
    rows = []
    for path in sorted((result.out_dir / "logs").glob("version_*/metrics.csv")):
        rows += list(csv.DictReader(path.open()))
    logged = [float(r["train/weight/rnd"]) for r in rows if r.get("train/weight/rnd")]
    assert len(logged) == 2 and all(0 <= w <= 0.5 for w in logged)
    final = json.loads((result.out_dir / "result.json").read_text())
    assert 0 <= final["final_weight"]["rnd"] <= 0.5
