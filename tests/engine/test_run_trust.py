"""Runs you can trust: a resumed run equals the uninterrupted one, a run folder refuses another config,
a diverged model is never checkpointed, Ctrl-C exits 130 with one line."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import lightning as L
import pytest
import torch
import yaml

from sskt.cli import main
from sskt.config import ExperimentConfig
from sskt.engine.run import fit
from sskt.errors import SSKTError

from testutils import ROOT, tiny_config


def _write(path, raw):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _weights(run_dir):
    return torch.load(run_dir / "target.pt", weights_only=True)["state_dict"]


def test_kill_9_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    train = {"epochs": 3, "schedule": "multistep", "milestones": [1, 2], "gamma": 0.5}
    whole = fit(ExperimentConfig.from_dict(tiny_config(tmp_path / "whole", train=train)))
    killed = tiny_config(tmp_path / "killed", train=train)
    # A separate process killed by SIGKILL in the middle of epoch 1 (after its 2nd batch): no clean-up runs.
    # The killed process computes with this process's thread count: float sums depend on it.
    script = textwrap.dedent(f"""
        import os, signal, lightning as L, torch
        from sskt.config import ExperimentConfig
        from sskt.engine.run import fit

        torch.set_num_threads({torch.get_num_threads()})

        class Kill(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.current_epoch == 1 and batch_idx == 2:
                    os.kill(os.getpid(), signal.SIGKILL)

        fit(ExperimentConfig.from_dict({killed!r}), callbacks=[Kill()])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = tmp_path / "killed" / "run" / "checkpoints" / "last.ckpt"
    assert [h["epoch"] for h in torch.load(ckpt, weights_only=True)["sskt"]["history"]] == [0]
    resumed = fit(ExperimentConfig.from_dict(killed))
    assert resumed.record["resumed_from"] == str(ckpt)
    assert [h["test_acc"] for h in resumed.history] == [h["test_acc"] for h in whole.history]
    a, b = _weights(tmp_path / "whole" / "run"), _weights(tmp_path / "killed" / "run")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rerun_with_another_config_is_refused_naming_the_keys(tmp_path, capsys):
    raw = tiny_config(tmp_path)
    assert main(["train", _write(tmp_path / "a.yaml", raw)]) == 0
    capsys.readouterr()
    code = main(["train", _write(tmp_path / "a.yaml", raw), "data.per_class=5", "train.lr=0.01",
                 "method.name=dml"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sskt: error:") and "\n" not in err, err
    for changed in ("data.per_class: 10 -> 5", "train.lr: 0.05 -> 0.01", "method.name: 'scratch' -> 'dml'"):
        assert changed in err
    assert "new out_dir" in err and "train.resume=false" in err
    # The finished run is untouched.
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["per_class"] == 10


def test_more_epochs_continue_on_purpose_and_say_so(tmp_path, capsys):
    raw = tiny_config(tmp_path, train={"epochs": 1, "schedule": "multistep", "milestones": [5]})
    fit(ExperimentConfig.from_dict(raw))
    capsys.readouterr()
    longer = fit(ExperimentConfig.from_dict(raw).with_overrides(["train.epochs=2"]))
    err = capsys.readouterr().err
    assert "continuing the run" in err and "train.epochs (1 -> 2)" in err
    assert [h["epoch"] for h in longer.history] == [1, 2]
    assert longer.record["resumed_from"]


def test_resume_false_starts_over_with_another_config(tmp_path, capsys):
    fit(ExperimentConfig.from_dict(tiny_config(tmp_path)))
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp_path, data={"per_class": 5},
                                                        train={"resume": False})))
    assert "starting over" in capsys.readouterr().err
    assert result.record["resumed_from"] is None and result.record["train_images"] == 50


class _DivergeAtEpochEnd(L.Callback):
    """Weights turn to inf in the last step of the second epoch (the loss of that step was still finite)."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                next(module.parameters()).fill_(float("inf"))


def test_a_diverged_model_is_never_checkpointed_and_a_lower_lr_never_meets_it(tmp_path, capsys):
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, train={"epochs": 3}))
    with pytest.raises(SSKTError, match="non-finite in epoch 2.*last good epoch"):
        fit(cfg, callbacks=[_DivergeAtEpochEnd()])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert [h["epoch"] for h in ckpt["sskt"]["history"]] == [0]
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # Following the advice (a lower lr) into the same folder is refused, naming the key and the way on.
    capsys.readouterr()
    code = main(["train", _write(tmp_path / "c.yaml", cfg.to_dict()), "train.lr=0.01"])
    err = capsys.readouterr().err
    assert code == 2 and "train.lr: 0.05 -> 0.01" in err and "train.resume=false" in err


def test_huge_lr_stops_in_one_line_and_leaves_no_poisoned_checkpoint(tmp_path, capsys):
    raw = tiny_config(tmp_path, train={"epochs": 3, "lr": 1e6})
    code = main(["train", _write(tmp_path / "c.yaml", raw)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("sskt: error:") and "\n" not in err, err
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_ctrl_c_prints_one_line_exits_130_and_leaves_a_resumable_checkpoint(tmp_path):
    raw = tiny_config(tmp_path, train={"epochs": 500, "schedule": "constant"})
    config = _write(tmp_path / "c.yaml", raw)
    proc = subprocess.Popen([sys.executable, "-m", "sskt.cli", "train", config], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("sskt: interrupted; run the same command again")
    assert torch.load(ckpt, weights_only=True)["sskt"]["history"]


def test_loggers_from_the_config_learning_rate_and_hyper_parameters_are_logged(tmp_path):
    raw = tiny_config(tmp_path, train={"epochs": 2, "loggers": [{"name": "csv", "name_": None}]})
    with pytest.raises(SSKTError, match="train.loggers.0: CSVLogger does not take these settings"):
        fit(ExperimentConfig.from_dict(raw))
    raw = tiny_config(tmp_path / "b", train={"epochs": 2, "loggers": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                                                      "name": "extra"}]})
    fit(ExperimentConfig.from_dict(raw))
    run = tmp_path / "b" / "run"
    hparams = yaml.safe_load((run / "logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["train.lr"] == 0.05 and hparams["method.name"] == "scratch"
    header = (run / "extra" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "lr-SGD" in header and "test/acc" in header


@pytest.mark.parametrize("spec, message", [
    ("visdom", "unknown logger 'visdom'; known: csv, tensorboard, wandb"),
    ("wandb", "WandbLogger cannot start: Requirement 'wandb"),
    ({"class_path": "no_such_pkg.Logger"}, "cannot import logger 'no_such_pkg.Logger'"),
])
def test_a_logger_that_cannot_start_is_one_line(tmp_path, capsys, spec, message):
    pytest.importorskip("lightning")
    try:
        import wandb  # noqa: F401
        if spec == "wandb":
            pytest.skip("wandb is installed here")
    except ImportError:
        pass
    raw = tiny_config(tmp_path, train={"loggers": [spec]})
    assert main(["train", _write(tmp_path / "c.yaml", raw)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sskt: error: train.loggers.0:") and message in err and "\n" not in err, err


def test_out_dir_under_a_file_is_one_line_before_any_data_is_read(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    raw = tiny_config(tmp_path, data={"dataset": "imagefolder", "root": str(tmp_path / "missing")})
    raw["out_dir"] = str(tmp_path / "file" / "run")
    assert main(["train", _write(tmp_path / "c.yaml", raw)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sskt: error: out_dir {tmp_path / 'file' / 'run'} lies under a file, not a folder; choose another out_dir"


def test_a_full_disk_is_one_line_naming_it_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    import errno

    import sskt.io as io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.torch, "save", full)
    assert main(["train", _write(tmp_path / "c.yaml", tiny_config(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sskt: error:") and "No space left on device" in err and "\n" not in err, err
    run = tmp_path / "run"
    assert not (run / "checkpoints" / "last.ckpt").exists() and not list(run.rglob("*.tmp"))
