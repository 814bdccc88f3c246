"""Inputs that used to pass silently or whose advice did not work when followed: each is now one
`sskt: error:` line (exit 2) or does what the user meant."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sskt.cli import main
from sskt.errors import SSKTError
from sskt.sources.bank import SourceBank
from sskt.sources.source import Source


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sskt: error:"), err
    return err[0]


@pytest.mark.parametrize("override, key", [("train.epochs=true", "train.epochs"), ("train.lr=false", "train.lr"),
                                           ("data.per_class=true", "data.per_class"),
                                           ("method.alpha=true", "method.alpha")])
def test_a_boolean_is_never_read_as_a_number(override: str, key: str, capsys: pytest.CaptureFixture) -> None:
    items = ["--recipe", "quick-digits", override, "--print-config"]
    if key.startswith("method."):
        items += ["method.name=sskt", "method.sources=[{name: s, arch: cifar_resnet20, num_classes: 10}]"]
    assert main(["train", *items]) == 2
    line = _one_error_line(capsys)
    assert key in line and ("got true" in line or "got false" in line)


def test_options_a_dataset_does_not_read_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--recipe", "quick-digits", "data.options.crop=4", f"out_dir={tmp_path}"]) == 2
    assert "takes no data.options" in _one_error_line(capsys)


def test_a_source_with_nan_outputs_is_named_where_its_outputs_are_computed() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    torch.nn.init.constant_(net[1].weight, float("nan"))
    bank = SourceBank([Source("broken", net, 4, input_size=8)])
    with pytest.raises(SSKTError, match="source 'broken' gave non-finite outputs"):
        bank(torch.rand(2, 3, 8, 8))


def _grid(tmp_path: Path) -> Path:
    cfg = {"name": "g", "out_dir": str(tmp_path / "grid"), "seeds": [0],
           "base": {"data": {"dataset": "digits", "per_class": 5, "test_per_class": 5, "crop_padding": 1},
                    "train": {"epochs": 1, "batch_size": 25, "progress_bar": False, "tensorboard": False}},
           "variants": [{"name": "scratch", "method": {"name": "scratch"}}]}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_report_only_without_finished_runs_says_so_and_creates_nothing(tmp_path: Path, capsys) -> None:
    assert main(["compare", str(_grid(tmp_path)), "--report-only"]) == 2
    assert "no finished run" in _one_error_line(capsys) and not (tmp_path / "grid").exists()


def test_compare_takes_overrides_after_its_options(tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    assert main(["compare", str(_grid(tmp_path)), "--out", str(out), "train.lr=0.02"]) == 0
    stored = yaml.safe_load((out / "scratch" / "seed0" / "config.yaml").read_text())
    assert stored["train"]["lr"] == 0.02
