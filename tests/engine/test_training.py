"""End to end through the CLI and the Python API on bundled digits (a few seconds per run)."""
import csv
import json
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml

from sskt.cli import main
from sskt.config import ExperimentConfig
from sskt.engine.history import reader_history
from sskt.engine.run import fit
from sskt.errors import SSKTError
from sskt.sources import load_network

from testutils import tiny_config


def _write(tmp_path, raw):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _metrics(out_dir):
    rows = []
    for path in sorted((out_dir / "logs").glob("version_*/metrics.csv")):
        with open(path) as fh:
            rows += list(csv.DictReader(fh))
    return rows


@pytest.fixture(scope="module")
def digits_source(tmp_path_factory):
    """A real source: ResNet-20 pretrained on the digits 'source' split (images the target never sees)."""
    tmp = tmp_path_factory.mktemp("src")
    raw = tiny_config(tmp, data={"train_split": "source", "per_class": None},
                      train={"epochs": 4, "batch_size": 64, "checkpoint_every": 4, "eval_every": 4})
    result = fit(ExperimentConfig.from_dict(raw))
    assert result.final > 60.0  # the source really learned digits
    return result.out_dir / "target.pt"


def test_cli_sskt_train_evaluate_export(tmp_path, digits_source, capsys):
    source = {"name": "digits", "checkpoint": str(digits_source), "input_size": 8}
    raw = tiny_config(tmp_path, method={"name": "sskt", "head": "transfer", "alpha": 0.5, "sources": [source]},
                      train={"epochs": 8, "eval_every": 4, "checkpoint_every": 4})
    assert main(["train", str(_write(tmp_path, raw)), "train.lr=0.05"]) == 0
    out_dir = tmp_path / "run"
    result = json.loads((out_dir / "result.json").read_text())
    assert result["final"] > 30.0  # 10 labels per class, 10 classes: chance is 10%
    assert result["config"]["train"]["lr"] == 0.05 and result["seed"] == 0 and "torch" in result["versions"]
    rows = _metrics(out_dir)
    assert any(r.get("train/aux/digits_epoch") for r in rows) and any(r.get("train/target_epoch") for r in rows)
    assert [h["epoch"] for h in result["history"]] == [4, 8]  # counted from 1

    ckpt = out_dir / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    assert main(["evaluate", str(ckpt)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["value"] == pytest.approx(result["final"], abs=1e-3)

    assert main(["export", str(ckpt), str(tmp_path / "exported.pt")]) == 0
    exported = torch.load(tmp_path / "exported.pt", weights_only=True)
    assert not any(k.startswith(("heads", "bank", "aux")) for k in exported["state_dict"])
    # the exported target is itself usable as a source
    assert load_network(None, tmp_path / "exported.pt").num_classes == 10


class _Crash(L.Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")


def test_resume_after_interruption_keeps_finished_epochs(tmp_path):
    raw = tiny_config(tmp_path, train={"epochs": 3, "lr": 0.05})
    cfg = ExperimentConfig.from_dict(raw)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[_Crash()])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and not list(ckpt.parent.glob("*.tmp"))
    first_two = torch.load(ckpt, weights_only=False)["sskt"]["history"]
    assert [h["epoch"] for h in first_two] == [0, 1]  # the engine's own history, in the checkpoint
    result = fit(cfg)
    assert result.record["resumed_from"] == str(ckpt)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]  # as a reader counts them
    assert result.history[:2] == reader_history(first_two)  # finished epochs are kept, not redone

    uninterrupted = fit(ExperimentConfig.from_dict(tiny_config(tmp_path / "b", train={"epochs": 3, "lr": 0.05})))
    assert [h["test_acc"] for h in uninterrupted.history[:2]] == [h["test_acc"] for h in reader_history(first_two)]


def _cli_error(tmp_path, capsys, raw, *extra):
    capsys.readouterr()
    code = main(["train", str(_write(tmp_path, raw)), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("sskt: error: ") and "\n" not in err, err
    return err


def test_bad_inputs_give_one_clear_line(tmp_path, capsys):
    def sskt(**kw):
        return {"name": "sskt", "sources": [{"name": "s", "arch": "cifar_resnet20", "num_classes": 10,
                                             "input_size": 8, **kw}]}

    assert "data root" in _cli_error(tmp_path, capsys, tiny_config(
        tmp_path, data={"dataset": "imagefolder", "root": str(tmp_path / "missing")}))
    assert "method.sources.0.alpha: must be >= 0, got -1" in _cli_error(tmp_path, capsys, tiny_config(tmp_path, method=sskt(alpha=-1)))
    assert "method.sources.0.temperature: must be > 0, got 0" in _cli_error(tmp_path, capsys, tiny_config(tmp_path, method=sskt(temperature=0)))
    assert "fewer than the 100 per class" in _cli_error(tmp_path, capsys, tiny_config(tmp_path, data={"per_class": 100}))
    assert "unknown key(s) in train: ['epoch']" in _cli_error(tmp_path, capsys, tiny_config(tmp_path), "train.epoch=3")

    net = load_network("cifar_resnet20", None, num_classes=10).module
    torch.save(net.state_dict(), tmp_path / "r20.pt")
    err = _cli_error(tmp_path, capsys, tiny_config(tmp_path, method=sskt(arch="cifar_resnet32",
                                                                         checkpoint=str(tmp_path / "r20.pt"))))
    assert "does not fit the architecture: missing keys: layer1.3" in err

    state = net.state_dict()
    state["linear.weight"] = torch.full_like(state["linear.weight"], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    err = _cli_error(tmp_path, capsys, tiny_config(tmp_path, method=sskt(checkpoint=str(tmp_path / "nan.pt"))))
    assert "source 's' gave non-finite outputs" in err  # named where its outputs are computed, before any loss


def test_unknown_method_lists_known():
    with pytest.raises(SSKTError, match="unknown method 'sktt'; known: .*scratch.*sskt"):
        fit(ExperimentConfig.from_dict({"method": {"name": "sktt"}, "data": {"dataset": "digits"}}))


def test_ddp_two_cpu_processes(tmp_path):
    raw = tiny_config(tmp_path, train={"epochs": 2, "batch_size": 10})
    cmd = [sys.executable, "-m", "sskt.cli", "train", str(_write(tmp_path, raw)), "train.accelerator=cpu",
           "train.devices=2", "train.strategy=ddp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["config"]["train"]["devices"] == 2 and len(result["history"]) == 2
    # 100 training images, 2 processes x batch 10: each process sees 5 batches per epoch
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 10


def test_quickstart_prints_its_table(tmp_path, capsys, monkeypatch):
    import sskt.experiments.quickstart as qs

    monkeypatch.setattr(qs, "EPOCHS", 1)  # the real demo uses 40 (15 for the source); the table and wording
    monkeypatch.setattr(qs, "SOURCE_EPOCHS", 1)  # are what is tested here
    results = qs.quickstart(seeds=2, out_dir=tmp_path)
    out = capsys.readouterr().out
    assert "| scratch |" in out and "| sskt    |" in out and "What the numbers mean" in out
    assert "Next, on your own data" in out and "sskt distill DATA_DIR" in out  # the way to real data
    assert "--recipe imagenet-source" in out
    assert "function matching" in out  # the labelled-only setting that measured best is the one shown
    assert set(results) == {"scratch", "sskt"} and all(len(v) == 2 for v in results.values())


def test_numbers_written_without_a_dot_are_numbers():
    # YAML 1.1 reads 5e-4 as a string; the config must still get the float.
    cfg = ExperimentConfig.from_dict({"train": {"weight_decay": "5e-4"}}).with_overrides(["train.lr=1e-3"])
    assert cfg.train.weight_decay == 5e-4 and cfg.train.lr == 1e-3
    with pytest.raises(SSKTError, match="train.lr: expected a number"):
        ExperimentConfig.from_dict({"train": {"lr": "fast"}})


def test_building_a_method_never_builds_the_soft_label_cache(tmp_path):
    # Building is cheap (what evaluate / export rebuild); the cache is prepare()'s, which only training calls.
    from sskt.data.datasets import load_data
    from sskt.engine.run import build_context
    from sskt.methods import build_method

    source = {"name": "s", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, method={
        "name": "sskt", "sources": [source], "cache": {"mode": "exact", "views": 2, "dir": str(tmp_path / "c")}}))
    splits = load_data(cfg.data)
    method = build_method(cfg.method, build_context(cfg, splits))
    assert method.cache is None and not (tmp_path / "c").exists()


def test_override_that_is_not_yaml_is_one_line(tmp_path, capsys):
    err = _cli_error(tmp_path, capsys, tiny_config(tmp_path), "method.sources=[{name: a, options: {x: 1}]")
    assert "override method.sources" in err and "not valid YAML" in err


def test_sskt_cache_builds_the_cache_that_fit_reads(tmp_path, capsys):
    """`sskt cache` seeds like fit: a randomly initialised source gets the same weights, so fit finds the
    cache already built (no new file, no build) and trains from it."""
    from sskt.experiments.cache import build_cache

    source = {"name": "rnd", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, method={
        "name": "sskt", "sources": [source], "cache": {"mode": "exact", "views": 2, "dir": str(tmp_path / "c")}}))
    torch.manual_seed(12345)  # whatever the caller's RNG state
    build_cache(cfg)
    built = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("*.sskc")}
    assert len(built) == 1
    torch.manual_seed(999)
    fit(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("*.sskc")} == built
