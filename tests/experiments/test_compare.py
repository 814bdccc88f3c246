"""`sskt compare` on a toy grid: tables, charts, reuse of finished runs, config checks."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from sskt.cli import main
from sskt.experiments.compare import CompareConfig, compare
from sskt.errors import SSKTError
from testutils import ROOT


def _toy(tmp_path: Path) -> Path:
    cfg = {
        "name": "toy", "out_dir": str(tmp_path / "grid"), "seeds": [0, 1],
        "base": {"data": {"dataset": "digits", "per_class": 10, "test_per_class": 20, "crop_padding": 1},
                 "target": {"arch": "cifar_resnet20"},
                 "train": {"epochs": 2, "batch_size": 50, "limit_train_batches": 1, "lr": 0.05, "schedule": "cosine",
                           "progress_bar": False, "tensorboard": False, "accelerator": "cpu"}},
        "variants": [{"name": "scratch", "method": {"name": "scratch"}},
                     {"name": "scratch-focal", "method": {"name": "scratch", "target_loss": "focal"},
                      "overrides": ["train.lr=0.03"]}],
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_toy_grid_writes_tables_and_charts_then_reuses_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _toy(tmp_path)
    assert main(["compare", str(path)]) == 0
    grid = tmp_path / "grid"
    for name in ("summary.md", "summary.csv", "runs.csv", "accuracy_bars.png", "test_curves.png"):
        assert (grid / name).is_file() and (grid / name).stat().st_size > 0, name
    assert (grid / "accuracy_bars.png").read_bytes()[:4] == b"\x89PNG"
    table = (grid / "summary.md").read_text()
    assert "| scratch | scratch | 2 |" in table and "±" in table
    rows = list(csv.DictReader((grid / "summary.csv").open()))
    assert [r["variant"] for r in rows] == ["scratch", "scratch-focal"]
    assert rows[0]["final_seed0"] and rows[0]["final_seed1"]
    run = grid / "scratch-focal" / "seed1" / "result.json"
    assert '"lr": 0.03' in run.read_text()  # the variant's override reached its runs
    stamp = run.stat().st_mtime_ns

    result = compare(path)
    assert len(result["reused"]) == 4 and not result["failed"]
    assert run.stat().st_mtime_ns == stamp


def test_a_finished_run_with_another_config_is_not_reused_silently(tmp_path: Path) -> None:
    path = _toy(tmp_path)
    cfg = CompareConfig.from_yaml(path)
    run = cfg.run_config(cfg.variants[0], 0)
    Path(run.out_dir).mkdir(parents=True)
    import json

    (Path(run.out_dir) / "result.json").write_text(json.dumps({"config": {**run.to_dict(), "seed": 7},
                                                               "final": 1.0, "best": 1.0, "history": []}))
    result = compare(path, only=["scratch"], overrides=["train.epochs=1"])
    assert any("another config" in f for f in result["failed"])


def test_bad_comparison_configs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(SSKTError, match="variant"):
        CompareConfig.from_dict({"variants": [{"name": "x"}]})
    with pytest.raises(SSKTError, match="unique"):
        CompareConfig.from_dict({"variants": [{"name": "a", "method": {"name": "scratch"}}] * 2})
    with pytest.raises(SSKTError, match="unknown key"):
        CompareConfig.from_dict({"variant": []})


def test_benchmark_config_builds_every_run_config() -> None:
    cfg = CompareConfig.from_yaml(ROOT / "benchmarks" / "compare_cifar10_lowlabel.yaml")
    assert len(cfg.seeds) == 3
    methods = {cfg.run_config(v, 0).method["name"] for v in cfg.variants}
    assert methods == {"scratch", "finetune", "kd", "dml", "maxl", "sskt"}


def test_seeds_flag_runs_only_the_seeds_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _toy(tmp_path)
    assert main(["compare", str(path), "--only", "scratch", "--seeds", "0"]) == 0
    grid = tmp_path / "grid"
    assert (grid / "scratch" / "seed0" / "result.json").is_file()
    assert not (grid / "scratch" / "seed1").exists() and not (grid / "scratch-focal").exists()
    rows = list(csv.DictReader((grid / "summary.csv").open()))
    assert [r["variant"] for r in rows] == ["scratch"] and rows[0]["seeds"] == "1"
    assert "final_seed0" in rows[0] and "final_seed1" not in rows[0]


@pytest.mark.parametrize("seeds, words", [("7", "[7]"), ("0,7", "[7]"), ("zero", "comma-separated")])
def test_seeds_not_in_the_file_are_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     seeds: str, words: str) -> None:
    path = _toy(tmp_path)
    capsys.readouterr()
    assert main(["compare", str(path), "--seeds", seeds]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sskt: error: ") and "\n" not in err, err
    assert words in err and "--seeds" in err
    assert not (tmp_path / "grid").exists()  # nothing was trained


def test_a_seed_given_twice_is_counted_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _toy(tmp_path)
    code = main(["compare", str(path), "--only", "scratch", "--seeds", "0,0"])
    if code == 2:  # refusing duplicates in one line is as good as ignoring them
        err = capsys.readouterr().err.strip()
        assert err.startswith("sskt: error: ") and "\n" not in err
        return
    rows = list(csv.DictReader((tmp_path / "grid" / "summary.csv").open()))
    assert rows[0]["seeds"] == "1"
