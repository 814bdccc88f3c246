"""A run folder is held by one run for the life of ``fit``: a second run in it stops at once, naming the
holder; a killed run leaves no lock behind; a finished or failed run releases it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from testutils import CrashInEpoch, tiny_config

from sskt.config import ExperimentConfig
from sskt.engine.rundir import launches_run, run_lock
from sskt.engine.run import fit
from sskt.errors import SSKTError

RUN_FILES = ("config.yaml", "result.json", "target.pt", "checkpoints/last.ckpt")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "RANK")}
    return subprocess.run([sys.executable, "-m", "sskt.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "OMP_NUM_THREADS": "1"})


def test_a_second_run_in_a_held_folder_stops_at_once_naming_the_holder(tmp_path):
    raw = tiny_config(tmp_path)
    first = fit(ExperimentConfig.from_dict(raw))
    before = {name: (first.out_dir / name).read_bytes() for name in RUN_FILES}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    with run_lock(first.out_dir):  # this test process is the run in progress
        # train.resume=false would remove the first run's checkpoint and results if it went ahead
        proc = _cli("train", str(config), "train.resume=false", "train.epochs=2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sskt: error: "), proc.stderr
    assert f"{first.out_dir} is in use by another sskt run (pid {os.getpid()} on host " in lines[0]
    assert "wait for it to end, or use another out_dir" in lines[0]
    assert {name: (first.out_dir / name).read_bytes() for name in RUN_FILES} == before


def test_a_killed_run_leaves_no_lock(tmp_path):
    out_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from sskt.engine.rundir import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)", str(out_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SSKTError, match=f"in use by another sskt run \\(pid {holder.pid} on host "):
            with run_lock(out_dir):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    # its owner file is still there, naming a dead process: the kernel released the lock all the same
    assert json.loads((out_dir / ".sskt-run.owner").read_text())["pid"] == holder.pid
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp_path)))
    assert (result.out_dir / "result.json").is_file()


def test_the_lock_is_released_when_a_run_ends_and_when_it_fails(tmp_path):
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, train={"epochs": 2}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg, callbacks=[CrashInEpoch(1)])
    assert not (Path(cfg.out_dir) / ".sskt-run.owner").exists()
    result = fit(cfg)  # resumes in the same folder after the failure
    assert len(result.history) == 2
    again = fit(cfg)  # and again after the run ended
    assert again.final == result.final and not (Path(cfg.out_dir) / ".sskt-run.owner").exists()


def test_further_ddp_ranks_do_not_lock_themselves_out(tmp_path, monkeypatch):
    for name in ("LOCAL_RANK", "NODE_RANK", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with run_lock(tmp_path):  # the launching process holds the folder ...
        monkeypatch.setenv("LOCAL_RANK", "1")  # ... and Lightning's rank 1 runs the same command
        with run_lock(tmp_path):
            pass
    assert launches_run({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"})  # the launcher, after a DDP run
    assert not launches_run({"NODE_RANK": "1"}) and not launches_run({"RANK": "3", "LOCAL_RANK": "0"})
