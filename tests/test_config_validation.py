"""Every bad config value is one line naming its dotted key, before any data is read (issue 11)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import sskt
from sskt.cli import main
from sskt.config import ExperimentConfig
from sskt.errors import SSKTError

SSKT = ["method.name=sskt", "method.sources=[{name: s, arch: cifar_resnet20, num_classes: 10, input_size: 8}]"]


def _config(tmp_path: Path, raw: dict | None = None) -> str:
    """A YAML experiment whose data root does not exist: an error about the data would mean data was read."""
    raw = raw if raw is not None else {
        "out_dir": str(tmp_path / "run"),
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "no-such-data")},
        "train": {"epochs": 1, "progress_bar": False, "tensorboard": False},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw) if isinstance(raw, dict) else raw)
    return str(path)


def _one_error_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sskt: error: "), err
    return lines[0]


BAD = [
    # (overrides, dotted key named in the message, words of the message)
    (["train.epochs=abc"], "train.epochs", "expected an integer, got 'abc'"),
    (["seed=abc"], "seed", "expected an integer"),
    (["train.epochs=2.5"], "train.epochs", "expected an integer, got 2.5"),
    (["train.epochs=0"], "train.epochs", "must be >= 1"),
    (["train.epochs="], "train.epochs", "expected an integer, got None"),
    (["train.lr=[1,2]"], "train.lr", "expected a number, got [1, 2]"),
    (["train.lr=0"], "train.lr", "must be > 0"),
    (["train.lr=fast"], "train.lr", "expected a number"),
    (["train.batch_size=0"], "train.batch_size", "must be >= 1, got 0"),
    (["train.eval_batch_size=-4"], "train.eval_batch_size", "must be >= 1"),
    (["train.milestones=5"], "train.milestones", "expected a list, got 5"),
    (["train.milestones=[60,x]"], "train.milestones.1", "expected an integer, got 'x'"),
    (["train.momentum=1"], "train.momentum", "must be < 1"),
    (["train.weight_decay=-1e-4"], "train.weight_decay", "must be >= 0"),
    (["train.eval_every=0"], "train.eval_every", "must be >= 1"),
    (["train.checkpoint_every=0"], "train.checkpoint_every", "must be >= 1"),
    (["train.nesterov=maybe"], "train.nesterov", "expected true or false"),
    (["train.schedule=linear"], "train.schedule", "multistep, cosine or constant"),
    (["train.epochs.x=3"], "train.epochs", "not a section"),
    (["train=5"], "train", "expected a mapping"),
    (["data.per_class=0"], "data.per_class", "must be >= 1"),
    (["data.per_class=ten"], "data.per_class", "expected an integer"),
    (["data.unlabeled_ratio=0"], "data.unlabeled_ratio", "must be > 0"),
    (["data.num_workers=-1"], "data.num_workers", "must be >= 0"),
    (["target.mean=[a,0.5,0.5]"], "target.mean.0", "expected a number, got 'a'"),
    (["target.stages=layer1"], "target.stages", "expected a list"),
    (["name=[a]"], "name", "expected a string"),
    (["method=sskt"], "method", "expected a mapping"),
    ([*SSKT, "method.alpha=abc"], "method.alpha", "expected a number, got 'abc'"),
    ([*SSKT, "method.head=[a]"], "method.head", "expected a string"),
    ([*SSKT, "method.transfer_width=wide"], "method.transfer_width", "expected an integer"),
    (["method.name=sskt", "method.sources=5"], "method.sources", "expected a list, got 5"),
    (["method.name=sskt", "method.sources=[5]"], "method.sources.0", "expected a mapping, got 5"),
    (["method.name=kd", "method.teacher=r20.pt"], "method.teacher", "expected a mapping"),
    (["method.name=dml", "method.peers=same"], "method.peers", "expected a list"),
    (["method.name=scratch", "method.focal_gamma=high"], "method.focal_gamma", "expected a number"),
    (["method.name=jigsaw", "method.permutations=2.5"], "method.permutations", "expected an integer"),
]


@pytest.mark.parametrize("overrides,key,words", BAD, ids=[" ".join(b[0])[-40:] for b in BAD])
def test_bad_value_is_one_line_naming_its_key(tmp_path, capsys, overrides, key, words):
    line = _one_error_line(capsys, ["train", _config(tmp_path), *overrides])
    assert f" {key}:" in line or f" {key} " in line, line  # the dotted key, not a longer or shorter one
    assert words in line, line
    assert "no-such-data" not in line  # stopped before the (missing) data was looked at


def test_the_same_config_with_good_values_reaches_the_data(tmp_path, capsys):
    """The control: the config above is valid, and then the missing data root is what stops it."""
    line = _one_error_line(capsys, ["train", _config(tmp_path), *SSKT, "method.alpha=0.5"])
    assert "no-such-data" in line


def test_bad_value_in_the_yaml_file_is_named_too(tmp_path, capsys):
    path = _config(tmp_path, "train:\n  epochs: 10\n  lr: [1, 2]\nmethod:\n  name: scratch\n  focal_gamma: x\n")
    assert "train.lr: expected a number" in _one_error_line(capsys, ["train", path])
    path = _config(tmp_path, "method:\n  name: scratch\n  focal_gamma: x\n")
    assert "method.focal_gamma: expected a number" in _one_error_line(capsys, ["train", path])


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "a list"), ("5\n", "a number"), ("just words\n", "a string")])
def test_yaml_whose_top_level_is_not_a_mapping(tmp_path, capsys, text, kind):
    line = _one_error_line(capsys, ["train", _config(tmp_path, text)])
    assert "must be a mapping of sections" in line and kind in line


def test_yaml_syntax_error_keeps_line_and_column(tmp_path, capsys):
    line = _one_error_line(capsys, ["train", _config(tmp_path, "train:\n  epochs: [1, 2\n  lr: 0.1\n")])
    assert "is not valid YAML" in line and "line 3" in line and "column" in line


def test_from_dict_refuses_a_list():
    with pytest.raises(SSKTError, match="must be a mapping of sections"):
        ExperimentConfig.from_dict([{"train": {}}])  # type: ignore[arg-type]


def test_lax_values_keep_working(tmp_path, capsys):
    """YAML 1.1's ``5e-4`` string is a float, ``2.0`` an int, a number for a text field is that text."""
    path = _config(tmp_path, "train:\n  weight_decay: 5e-4\n  epochs: 2.0\n  precision: 16\nname: 2024\n")
    capsys.readouterr()
    assert main(["train", path, "--print-config", "train.lr=1e-3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["weight_decay"] == 5e-4 and cfg["train"]["lr"] == 1e-3
    assert cfg["train"]["epochs"] == 2 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["train"]["precision"] == "16" and cfg["name"] == "2024"


def test_home_is_expanded_everywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    home = str(tmp_path)
    raw = {
        "data": {"dataset": "imagefolder", "root": "~/data", "unlabeled": "~/unlabelled"},
        "target": {"checkpoint": "~/w.pth"},
        "method": {"name": "sskt", "sources": [{"name": "s", "arch": "cifar_resnet20", "checkpoint": "~/s.pt"}]},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(path), "out_dir=~/x", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["out_dir"] == f"{home}/x"
    assert cfg["data"]["root"] == f"{home}/data" and cfg["data"]["unlabeled"] == f"{home}/unlabelled"
    assert cfg["target"]["checkpoint"] == f"{home}/w.pth"
    assert cfg["method"]["sources"][0]["checkpoint"] == f"{home}/s.pt"

    kd = ExperimentConfig.from_dict({"method": {"name": "kd", "teacher": {"arch": "cifar_resnet20",
                                                                          "checkpoint": "~/t.pt"}}})
    assert kd.method["teacher"]["checkpoint"] == f"{home}/t.pt"
    assert ExperimentConfig.from_dict({"name": "~name", "out_dir": "~"}).out_dir == home
    assert ExperimentConfig.from_dict({"name": "~name"}).name == "~name"  # only ~ and ~/ are the home folder


def test_print_config_is_the_resolved_config(tmp_path, capsys):
    path = _config(tmp_path)
    overrides = ["train.epochs=3", "data.per_class=5", *SSKT]
    capsys.readouterr()
    assert main(["train", path, "--print-config", *overrides]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == ExperimentConfig.from_yaml(path, overrides).to_dict()
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written

    assert main(["pretrain", "--print-config", "train.epochs=2"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["name"] == "pretrain" and cfg["method"] == {"name": "scratch"} and cfg["train"]["epochs"] == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"sskt {sskt.__version__}"


def test_train_help_lists_keys_methods_datasets_and_archs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--print-config" in out
    for words in ("epochs=200", "batch_size=128", "milestones=[60,120,160]", "dataset=cifar10",
                  "arch=cifar_resnet20", "sources=[]", "temperature=4.0", "digits", "cifar_resnet56"):
        assert words in out, words
    from sskt.methods import METHODS

    assert all(name in out for name in METHODS.names())
