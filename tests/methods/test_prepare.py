"""Building a method is cheap; its expensive, data-dependent work is an explicit step, ``Method.prepare``.

``fit`` and ``sskt cache`` call it; rebuilding a trained run (``load_trained``: evaluate) never does. The
build draws the same random numbers as when that work was done while building, so runs are unchanged.
"""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

import sskt.cluster.pipeline as pipeline
import sskt.sources.adapt as adapt
from sskt.cli import main
from sskt.config import ExperimentConfig
from sskt.data.datasets import load_data
from sskt.data.tensor_dataset import ImageTensorDataset
from sskt.engine.run import build_context, evaluate, fit, load_trained
from sskt.errors import SSKTError
from sskt.methods import build_method
from sskt.models.factory import create_model
from sskt.sources.cache import SoftLabelCache
from sskt.sources.source import Source
from testutils import tiny_config

SOURCE = {"name": "s", "arch": "cifar_resnet20", "num_classes": 7, "input_size": 8}


def _cache_method(cache_dir, **source) -> dict:
    return {"name": "sskt", "head": "linear", "source_precision": "fp32", "sources": [{**SOURCE, **source}],
            "cache": {"mode": "exact", "views": 2, "dir": str(cache_dir)}}


def _built(tmp_path, method: dict, **data):
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, method=method, data=data))
    ctx = build_context(cfg, load_data(cfg.data))
    return build_method(cfg.method, ctx), ctx


def _forbid(monkeypatch, owner, name: str) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} ran")

    monkeypatch.setattr(owner, name, refuse)


def test_sskt_builds_its_cache_in_prepare_not_when_built(tmp_path):
    cache = tmp_path / "cache"
    method, ctx = _built(tmp_path, _cache_method(cache))
    assert method.cache is None and not cache.exists()
    lines = method.prepare(ctx)
    assert method.cache is not None and len(list(cache.glob("*.sskc"))) == 1
    assert lines[0].startswith("s: ") and lines[-1].startswith("total") and "built 200 views/source" in lines[-1]


def test_probes_and_clusters_wait_for_prepare(tmp_path, monkeypatch):
    _forbid(monkeypatch, adapt, "linear_probe")
    _forbid(monkeypatch, pipeline, "cluster_images")
    sskt_method, sskt_ctx = _built(tmp_path / "a", {"name": "sskt", "source_precision": "fp32",
                                                    "sources": [{**SOURCE, "adapt": "probe"}]}, val_per_class=2)
    kd, kd_ctx = _built(tmp_path / "b", {"name": "kd", "teacher": {**SOURCE, "adapt": "probe"}})
    clusters, cluster_ctx = _built(tmp_path / "c", {"name": "cluster-transfer", "teacher": "hog", "hog_cell": 4,
                                                    "k": 5, "niter": 5, "cache_dir": str(tmp_path / "k")})
    assert not sskt_method.adapted and not kd.adapted_teacher and clusters.pseudo_train is None
    assert sskt_method.sources[0].num_classes == kd.teacher.num_classes == 10  # already the adapted shape
    monkeypatch.undo()

    assert sskt_method.prepare(sskt_ctx) == [] and set(sskt_method.adapted["s"]) == {"weight_decay", "train_images",
                                                                                       "val_top1"}
    assert kd.prepare(kd_ctx) == [] and kd.adapted_teacher["train_images"] == 100
    assert clusters.prepare(cluster_ctx) == ["100 training images in 5 clusters"]
    assert clusters.pseudo_train.shape == (100,) and clusters.summary["k"] == 5 and "test_nmi" in clusters.summary
    unprepared = build_method({"name": "cluster-transfer", "teacher": "hog", "hog_cell": 4, "k": 5}, cluster_ctx)
    with pytest.raises(SSKTError, match="call prepare"):
        unprepared.training_step({"index": torch.arange(2), "image": torch.rand(2, 3, 8, 8)})


def _colours(n: int, seed: int) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(4).repeat_interleave(n)
    x = torch.tensor([[230, 30, 30], [30, 230, 30], [30, 30, 230], [200, 200, 40]])[y][:, :, None, None]
    return ImageTensorDataset((x + 40 * torch.randn(len(y), 3, 8, 8, generator=g)).clamp(0, 255).byte(), y)


@pytest.mark.parametrize("with_val", [False, True])
def test_a_probe_fitted_later_is_the_same_and_never_moves_the_random_stream(with_val):
    train, val = _colours(6, 0), (_colours(2, 1) if with_val else None)

    def source() -> Source:
        return Source("s", create_model("cifar_resnet20", 7), 7, input_size=8)

    torch.manual_seed(5)
    at_once = source()
    before = torch.get_rng_state()
    info = adapt.adapt_with_probe(at_once, train, val)  # a fit during the build
    assert torch.equal(torch.get_rng_state(), before)

    torch.manual_seed(5)
    later = source()
    adapt.make_room_for_probe(later, train.targets, val.targets if val is not None else None)
    assert torch.equal(torch.get_rng_state(), before)  # the build draws nothing for the probe ...
    assert adapt.fit_probe_in_place(later, train, val) == info
    assert torch.equal(torch.get_rng_state(), before)  # ... and neither does prepare
    assert later.num_classes == at_once.num_classes == 4
    a, b = at_once.state_dict(), later.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_target_of_a_run_with_an_adapted_source_depends_on_the_run_seed(tmp_path):
    """Regression: the probe used to reseed the global generator (torch.manual_seed(0)), so every seed of
    a run with ``adapt: probe`` started its target from the same weights."""
    from sskt.engine.run import build_context
    from sskt.data import load_data
    from sskt.methods import build_method

    def target_weights(seed: int):
        cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, seed=seed, method=_cache_method(tmp_path / "c", adapt="probe")))
        torch.manual_seed(seed)  # as fit does (seed_everything)
        splits = load_data(cfg.data)
        method = build_method(cfg.method, build_context(cfg, splits))
        return torch.cat([p.flatten() for p in method.target.parameters()])

    assert not torch.equal(target_weights(0), target_weights(1))
    assert torch.equal(target_weights(1), target_weights(1))


def test_a_trained_run_is_rebuilt_and_evaluated_without_its_preparation(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, method=_cache_method(cache, adapt="probe")))
    result = fit(cfg)
    assert result.record["adapted/s"]["train_images"] == 100
    shutil.rmtree(cache)
    _forbid(monkeypatch, adapt, "linear_probe")
    _forbid(monkeypatch, SoftLabelCache, "open_or_build")
    _, method = load_trained(result.checkpoint)
    assert method.cache is None and not method.adapted
    assert evaluate(result.checkpoint)["value"] == pytest.approx(result.final, abs=1e-3)
    assert not cache.exists()


def test_fit_refuses_unlabelled_images_before_preparing(tmp_path, monkeypatch):
    from sskt.methods.base import Method

    _forbid(monkeypatch, Method, "prepare")
    raw = tiny_config(tmp_path, data={"unlabeled": "rest"}, method={"name": "scratch"})
    with pytest.raises(SSKTError, match="does not learn from unlabelled images"):
        fit(ExperimentConfig.from_dict(raw))


def _cli(tmp_path, capsys, raw) -> tuple[int, list[str], str]:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    code = main(["cache", str(path)])
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err.strip()


def test_sskt_cache_command_builds_and_reports(tmp_path, capsys):
    cache = tmp_path / "cache"
    weights = tmp_path / "source.pt"  # the same source every time (random weights would change the cache key)
    torch.save(create_model("cifar_resnet20", 7).state_dict(), weights)
    raw = tiny_config(tmp_path, method=_cache_method(cache, checkpoint=str(weights)))
    code, out, _ = _cli(tmp_path, capsys, raw)
    assert code == 0 and len(out) == 3, out
    assert out[0].startswith("s: ") and str(cache) in out[0]
    assert out[1].startswith("total") and "built 200 views/source" in out[1]
    assert out[2].startswith("done in") and "`sskt train` with the same config" in out[2]
    code, again, _ = _cli(tmp_path, capsys, raw)
    assert code == 0 and again[1].endswith("nothing to build") and len(list(cache.glob("*.sskc"))) == 1


@pytest.mark.parametrize("method, says", [
    ({"name": "scratch"}, "sskt cache works on sskt experiments; this one's method is 'scratch'"),
    ({"name": "sskt", "sources": [SOURCE]}, "this experiment has no method.cache"),
])
def test_sskt_cache_without_a_cache_is_one_line(tmp_path, capsys, monkeypatch, method, says):
    import sskt.experiments.cache as builder

    _forbid(monkeypatch, builder, "load_data")  # refused before any data is read
    code, out, err = _cli(tmp_path, capsys, tiny_config(tmp_path, method=method))
    assert code == 2 and not out and err.startswith("sskt: error: ") and says in err and "\n" not in err


@pytest.mark.parametrize("head, weighting, warned", [("main", "fixed", True), ("main", "gradsim", False),
                                                     ("transfer", "fixed", False)])
def test_a_weak_adapted_source_teaching_the_main_head_is_warned_about(tmp_path, monkeypatch, capsys, head,
                                                                       weighting, warned):
    # Measured: a 26%-accurate adapted source as head: main's teacher cost 10.6 points; gradsim's gate
    # judges the source itself, so no warning there.
    import sskt.methods.sskt as sskt_module

    monkeypatch.setattr(sskt_module, "adapt_source", lambda src, ctx: {"val_top1": 26.4, "train_images": 100.0})
    method, ctx = _built(tmp_path, {"name": "sskt", "head": head, "weighting": weighting, "source_precision": "fp32",
                                    "sources": [{**SOURCE, "adapt": "probe"}]}, val_per_class=2)
    method.prepare(ctx)
    err = capsys.readouterr().err
    assert ("source 's' scores 26.4% on the validation split" in err and "use head: auto" in err) == warned
