"""SSKT's ``head: auto``: each source judged once, before training, on the validation split; a strong one
teaches the main head, a weak or foreign one its own transfer module. And the weak-teacher warning of KD."""
from __future__ import annotations

import pytest
import torch

import sskt.methods._util as util
import sskt.methods.sskt as sskt_module
from sskt.config import ExperimentConfig
from sskt.data.datasets import load_data
from sskt.engine.run import build_context, fit
from sskt.errors import SSKTError
from sskt.methods import build_method
from sskt.methods.base import parse_options
from testutils import tiny_config

FOREIGN = {"name": "f", "arch": "cifar_resnet20", "num_classes": 7, "input_size": 8}  # 7 classes: not the target's 10


def _built(tmp_path, method: dict, val_per_class: int | None = 2):
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, method={"name": "sskt", "source_precision": "fp32",
                                                                   **method}, data={"val_per_class": val_per_class}))
    ctx = build_context(cfg, load_data(cfg.data))
    torch.manual_seed(0)  # the same target and heads for every head option
    return build_method(cfg.method, ctx), ctx


def _fake_probe(monkeypatch, val_top1: float) -> None:
    monkeypatch.setattr(sskt_module, "adapt_source", lambda src, ctx: {"val_top1": val_top1, "train_images": 100.0})


def _losses(method, ctx) -> dict[str, float]:
    batch = {"image": ctx.train_data.images[:8].float() / 255.0, "target": ctx.train_data.targets[:8]}
    return {k: round(v.item(), 6) for k, v in method.training_step(batch).losses.items()}


def test_a_strong_source_teaches_the_main_head_as_head_main_would(tmp_path, monkeypatch, capsys):
    _fake_probe(monkeypatch, 66.4)
    source = {**FOREIGN, "adapt": "probe"}
    auto, ctx = _built(tmp_path, {"head": "auto", "sources": [source]})
    auto.prepare(ctx)
    assert "source 'f' scores 66.4% on the validation split (at least 50%): it teaches the main head" in \
        capsys.readouterr().err
    assert auto.extra_results()["teaches"] == {"f": "main"}
    # The same losses as head: main chosen by hand, from the same weights; the unused transfer module stays
    # out of the optimiser, so the trained parameters are the same too.
    by_hand, ctx2 = _built(tmp_path, {"head": "main", "sources": [source]})
    by_hand.prepare(ctx2)
    assert _losses(auto, ctx) == _losses(by_hand, ctx2)
    assert not any(p.requires_grad for p in auto.heads["f"].parameters())


def test_a_weak_source_is_left_out_and_never_runs(tmp_path, monkeypatch, capsys):
    # Measured: a 26% source cost 10.6 points through the main head and 2.1 through a transfer module.
    _fake_probe(monkeypatch, 26.4)
    auto, ctx = _built(tmp_path, {"head": "auto", "mixup": 1.0, "sources": [{**FOREIGN, "adapt": "probe"}]})
    auto.prepare(ctx)
    assert "source 'f' scores 26.4% on the validation split (below 50%): left out" in capsys.readouterr().err
    assert auto.extra_results()["teaches"] == {"f": "nothing"}

    def refuse(*args):
        raise AssertionError("a left-out source ran")

    auto.bank.sources[0].network.register_forward_pre_hook(refuse)
    losses = _losses(auto, ctx)
    assert losses["aux/f"] == 0.0
    by_hand, ctx2 = _built(tmp_path, {"head": "transfer", "sources": [FOREIGN]})
    assert losses["target"] == _losses(by_hand, ctx2)["target"]  # the target learns from its labels alone
    assert auto.weighting.effective() == {"f": 0.0}  # what the weight log shows
    assert not any(p.requires_grad for p in auto.heads["f"].parameters())


def test_auto_measures_an_unadapted_source_of_the_targets_classes_and_keeps_foreign_ones_on_transfer(
        tmp_path, capsys):
    same_labels = {"name": "same", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}
    sources = [same_labels, FOREIGN]
    low_bar, ctx = _built(tmp_path, {"head": "auto", "auto_min_top1": 0.0, "sources": sources})
    low_bar.prepare(ctx)
    assert low_bar.main_taught == ["same"]
    err = capsys.readouterr().err
    assert "source 'f' does not predict the target's classes: it teaches its own transfer module" in err
    high_bar, ctx = _built(tmp_path, {"head": "auto", "auto_min_top1": 100.0, "sources": sources})
    high_bar.prepare(ctx)
    assert high_bar.main_taught == [] and high_bar.left_out == ["same"]  # untrained: below 100% on 20 digits


def test_auto_without_a_validation_split_is_one_clear_line(tmp_path, monkeypatch):
    _fake_probe(monkeypatch, 66.4)
    method, ctx = _built(tmp_path, {"head": "auto", "sources": [{**FOREIGN, "adapt": "probe"}]}, val_per_class=None)
    with pytest.raises(SSKTError, match="head: auto judges each source on the validation split.*val_per_class"):
        method.prepare(ctx)


@pytest.mark.parametrize("options, says", [({"weighting": "gradsim"}, "use one of them"),
                                           ({"auto_min_top1": 150.0}, "0 to 100")])
def test_auto_refuses_what_it_cannot_honour(options, says):
    with pytest.raises(SSKTError, match=says):
        parse_options(sskt_module.SSKTOptions, {"sources": [FOREIGN], "head": "auto", **options})


def test_kd_warns_about_a_weak_adapted_teacher(tmp_path, monkeypatch, capsys):
    import sskt.methods.kd as kd_module

    monkeypatch.setattr(kd_module, "adapt_source", lambda src, ctx: {"val_top1": 26.4, "train_images": 100.0})
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, data={"val_per_class": 2}, method={
        "name": "kd", "evaluate_teacher": False, "teacher": {**FOREIGN, "adapt": "probe"}}))
    ctx = build_context(cfg, load_data(cfg.data))
    build_method(cfg.method, ctx).prepare(ctx)
    err = capsys.readouterr().err
    assert "source 'f' scores 26.4% on the validation split" in err and "head: auto" in err
    assert err.count("\n") == err.count("sskt: warning") + err.count("sskt: fitting")


def test_the_warning_bar_is_the_auto_bar():
    assert sskt_module.SSKTOptions(sources=[FOREIGN]).auto_min_top1 == util.WEAK_MAIN_TEACHER_TOP1


def test_a_run_with_head_auto_trains_from_the_cache_on_unlabelled_images_and_records_its_choice(tmp_path):
    # configs/imagenet_source.yaml's shape: an adapted source, unlabelled images, the soft-label cache.
    method = {"name": "sskt", "head": "auto", "auto_min_top1": 0.0, "alpha": 1.0, "source_precision": "fp32",
              "cache": {"mode": "exact", "views": 2, "dir": str(tmp_path / "cache")},
              "sources": [{**FOREIGN, "adapt": "probe"}]}
    raw = tiny_config(tmp_path, method=method, data={"val_per_class": 2, "unlabeled": "rest", "unlabeled_count": 40})
    result = fit(ExperimentConfig.from_dict(raw))
    assert result.record["teaches"] == {"f": "main"}
    assert 0.0 <= result.final <= 100.0


def test_the_cache_holds_no_soft_labels_of_a_left_out_source(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sskt_module, "adapt_source",
                        lambda src, ctx: {"val_top1": 66.4 if src.name == "good" else 26.4, "train_images": 100.0})
    sources = [{**FOREIGN, "name": "good", "adapt": "probe"}, {**FOREIGN, "name": "weak", "adapt": "probe"}]
    cache = {"mode": "exact", "views": 2, "dir": str(tmp_path / "cache")}
    method, ctx = _built(tmp_path, {"head": "auto", "cache": cache, "sources": sources})
    method.prepare(ctx)
    assert method.left_out == ["weak"]
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.sskc")) == ["good"]
    assert set(method.cache.files) == {"good"}  # what training batches are given
    raw = tiny_config(tmp_path, method={"name": "sskt", "head": "auto", "source_precision": "fp32", "cache": cache,
                                        "sources": sources}, data={"val_per_class": 2})
    assert fit(ExperimentConfig.from_dict(raw)).record["teaches"] == {"good": "main", "weak": "nothing"}
    # Every source left out: nothing to cache, no cache at all (the target learns from its labels alone).
    monkeypatch.setattr(sskt_module, "adapt_source", lambda src, ctx: {"val_top1": 10.0, "train_images": 100.0})
    method, ctx = _built(tmp_path, {"head": "auto", "cache": {**cache, "dir": str(tmp_path / "c2")},
                                    "sources": sources})
    assert method.prepare(ctx) == [] and method.soft_label_store() is None
    assert not (tmp_path / "c2").exists() or not list((tmp_path / "c2").glob("*.sskc"))
