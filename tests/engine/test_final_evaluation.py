"""Every run is scored after its last epoch, whatever train.eval_every says, and a rerun of a finished run
gives the same result instead of an error."""
from __future__ import annotations

import json
from pathlib import Path

from sskt.config import ExperimentConfig
from sskt.engine.run import fit
from testutils import tiny_config


def test_eval_every_that_does_not_divide_epochs_still_scores_the_last_epoch(tmp_path: Path) -> None:
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, train={"epochs": 3, "eval_every": 2}))
    result = fit(cfg)
    assert [h["epoch"] for h in result.history] == [2, 3]  # epoch 3 because it is the last (counted from 1)
    assert result.final == result.history[-1]["test_acc"]
    again = fit(cfg)  # the run is finished: a rerun resumes at its end and reports the same score
    assert again.final == result.final
    assert json.loads((tmp_path / "run" / "result.json").read_text())["final"] == result.final


def test_eval_every_larger_than_epochs(tmp_path: Path) -> None:
    result = fit(ExperimentConfig.from_dict(tiny_config(tmp_path, train={"epochs": 2, "eval_every": 5})))
    assert [h["epoch"] for h in result.history] == [2]
