"""One convention for every number a reader sees: percent, epochs from 1, rounded, and ``hp_metric`` set;
``result.json`` carries its format, and a record an older sskt wrote reads as today's."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from sskt.commands.kit import print_run_result
from sskt.config import ExperimentConfig
from sskt.engine.export import export
from sskt.engine.history import RESULT_FORMAT, read_result
from sskt.engine.run import fit
from sskt.errors import SSKTError
from sskt.experiments.compare import CompareConfig, compare
from sskt.experiments.distill import _finished
from testutils import tiny_config

# What an sskt before the format key wrote: epochs from 0, float32 noise, no "format".
OLD_RECORD = {
    "name": "old", "seed": 0, "metric": "acc", "config": {"train": {"lr": 1e-05, "epochs": 2}},
    "final": 31.00000023841858, "best": 30.000001192092896, "best_epoch": 0, "best_val": 40.00000059604645,
    "final_macro_acc": 30.666666388511658,
    "history": [{"epoch": 0, "val_acc": 40.00000059604645, "test_acc": 30.000001192092896, "train_seconds": 1.2,
                 "train_loss": 2.3025850929940455},
                {"epoch": 1, "val_acc": 35.0, "test_acc": 31.00000023841858, "train_seconds": 2.41,
                 "train_loss": 2.1000000238418579}],
    "train_seconds": 2.4123456789, "wall_seconds": 9.87, "train_images": 100,
    "adapted/src": {"weight_decay": 1e-05, "train_images": 100.0, "val_top1": 55.55555555555556},
}


def _floats(value, key=""):
    """(key, float) of every float in a record, at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _floats(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v, key)
    elif isinstance(value, float):
        yield key, value


def _metrics_csv(out_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((out_dir / "logs").glob("version_*/metrics.csv")):
        rows += list(csv.DictReader(path.open()))
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch run on digits with a validation split and TensorBoard."""
    tmp = tmp_path_factory.mktemp("result-format")
    raw = tiny_config(tmp, data={"val_per_class": 5}, train={"epochs": 2, "tensorboard": True})
    return fit(ExperimentConfig.from_dict(raw))


def test_result_json_is_rounded_counts_epochs_from_1_and_names_its_format(run):
    record = json.loads((run.out_dir / "result.json").read_text())
    assert record["format"] == RESULT_FORMAT and record == run.record
    assert [h["epoch"] for h in record["history"]] == [1, 2]  # a 2-epoch run ends at epoch 2
    assert 1 <= record["best_epoch"] <= 2
    numbers = [(k, v) for k, v in _floats({k: v for k, v in record.items() if k not in ("config", "versions")})]
    assert numbers
    for key, value in numbers:  # no float32 noise: 4 decimals at most, seconds 2
        assert value == round(value, 2 if "seconds" in key else 4), (key, value)
    assert run.history == record["history"] and run.final == record["final"] == record["history"][-1]["test_acc"]


def test_train_accuracy_is_in_percent_like_validation_and_test(run):
    train_acc = [float(r["train/acc"]) for r in _metrics_csv(run.out_dir) if r.get("train/acc")]
    val_acc = [float(r["val/acc"]) for r in _metrics_csv(run.out_dir) if r.get("val/acc")]
    assert train_acc and max(train_acc) > 1.0 and max(val_acc) > 1.0  # a fraction would be at most 1
    assert all(0.0 <= a <= 100.0 for a in train_acc)


def test_hp_metric_is_the_final_validation_accuracy(run):
    final_val = run.history[-1]["val_acc"]
    logged = [float(r["hp_metric"]) for r in _metrics_csv(run.out_dir) if r.get("hp_metric")]
    assert logged and logged[-1] == pytest.approx(final_val, abs=1e-3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = [p.parent for p in (run.out_dir / "tensorboard").glob("version_*/events.out.tfevents.*")]
    board = EventAccumulator(str(events))
    board.Reload()
    values = [e.value for e in board.Scalars("hp_metric")]
    assert values[-1] == pytest.approx(final_val, abs=1e-3)  # not left at -1


def test_hp_metric_is_the_test_accuracy_without_a_validation_split(tmp_path):
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp_path)))
    logged = [float(r["hp_metric"]) for r in _metrics_csv(result.out_dir) if r.get("hp_metric")]
    assert logged[-1] == pytest.approx(result.history[-1]["test_acc"], abs=1e-3)


def test_model_card_and_printed_line_count_epochs_like_result_json(run, tmp_path, capsys):
    card = export(run.checkpoint, tmp_path / "model.pt").card.read_text()
    record = run.record
    assert "after epoch 2 of 2" in card
    assert f"(epoch {record['best_epoch']}, validation {record['best_val']:.2f}%): {record['best']:.2f}%" in card
    print_run_result(run)
    assert f"at best val (epoch {record['best_epoch']}): {record['best']:.2f}%" in capsys.readouterr().out


class _NaNWeightsInSecondEpoch(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))


def test_the_nan_guard_names_the_epoch_counted_from_1(tmp_path):
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, train={"epochs": 2}))
    with pytest.raises(SSKTError, match=r"loss became nan at step \d+ \(epoch 2\)"):
        fit(cfg, callbacks=[_NaNWeightsInSecondEpoch()])


def test_an_old_record_reads_as_the_new_convention(tmp_path):
    new = read_result(json.loads(json.dumps(OLD_RECORD)))
    assert new["format"] == RESULT_FORMAT
    assert [h["epoch"] for h in new["history"]] == [1, 2] and new["best_epoch"] == 1
    assert new["final"] == 31.0 and new["best"] == 30.0 and new["best_val"] == 40.0
    assert new["history"][1]["train_loss"] == 2.1 and new["train_seconds"] == 2.41
    assert new["adapted/src"] == {"weight_decay": 1e-05, "train_images": 100.0, "val_top1": 55.5556}
    assert new["config"] == OLD_RECORD["config"]  # the config as given: never rounded
    path = tmp_path / "result.json"
    path.write_text(json.dumps(OLD_RECORD))
    assert read_result(path) == new and read_result(new) == new  # a file alike; a new record is kept as it is
    path.write_text(json.dumps({**new, "format": "sskt-result-v9"}))
    with pytest.raises(SSKTError, match="sskt-result-v9") as err:
        read_result(path)
    assert "\n" not in str(err.value)


def _old_form(record: dict) -> dict:
    """``record`` as an sskt before the format key wrote it."""
    old = {k: v for k, v in record.items() if k != "format"}
    old["history"] = [{**h, "epoch": h["epoch"] - 1} for h in record["history"]]
    old["best_epoch"] = None if record.get("best_epoch") is None else record["best_epoch"] - 1
    return old


def test_compare_and_distill_read_an_old_run_as_a_new_one(run, tmp_path):
    grid = {"name": "g", "out_dir": str(tmp_path / "grid"), "seeds": [0],
            "base": {k: v for k, v in run.record["config"].items() if k in ("data", "target", "train")},
            "variants": [{"name": "old", "method": {"name": "scratch"}}, {"name": "new", "method": {"name": "scratch"}}]}
    cfg = CompareConfig.from_dict(grid)
    for variant, record in (("old", _old_form(run.record)), ("new", run.record)):
        run_cfg = cfg.run_config(next(v for v in cfg.variants if v.name == variant), 0)
        Path(run_cfg.out_dir).mkdir(parents=True)
        (Path(run_cfg.out_dir) / "result.json").write_text(json.dumps({**record, "config": run_cfg.to_dict()}))
        assert _finished(run_cfg)["history"] == run.record["history"]  # sskt distill's reuse of a stage
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    result = compare(tmp_path / "grid.yaml", report_only=True)
    assert sorted(result["reused"]) == ["new/seed0", "old/seed0"] and not result["failed"]
    old_row, new_row = result["rows"]
    assert {k: v for k, v in old_row.items() if k != "variant"} == {k: v for k, v in new_row.items()
                                                                      if k != "variant"}
    assert "format" not in old_row["notes"] and "format" not in new_row["notes"]
