"""Nested options (a source entry and its kind's options, the soft-label cache, a KD teacher, a comparison
file) are validated like the config sections (issue 12): one line naming the dotted key, before any data
is read; unknown keys are refused with the known ones; every config and benchmark file still loads."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from testutils import ROOT

from sskt.cli import main
from sskt.config import ExperimentConfig
from sskt.errors import SSKTError
from sskt.experiments.compare import CompareConfig
from sskt.methods.base import check_method
from sskt.sources.cache_keys import CacheSpec
from sskt.sources.clustered import ClusteredOptions
from sskt.sources.source import SourceConfig, source_config

GOOD_SOURCE = {"name": "good", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}
HOG = {"teacher": "hog", "k": 4, "data": {"dataset": "digits"}}


def _names(message: str, key: str) -> bool:
    """The message names ``key`` itself (``key: ...``, ``in key: ...``, ``key is ...``), not a longer or shorter key."""
    return re.search(rf"(^| ){re.escape(key)}[: ]", message) is not None


def _cli_error(tmp_path: Path, capsys, method: dict) -> str:
    """``sskt train`` on an experiment with this method section and a missing data root: its one line."""
    raw = {"out_dir": str(tmp_path / "run"), "data": {"dataset": "imagefolder", "root": str(tmp_path / "no-data")},
           "method": method, "train": {"epochs": 1, "progress_bar": False, "tensorboard": False}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sskt: error: ") and "Traceback" not in out + err, err
    assert "no-data" not in lines[0]  # stopped before the (missing) data was looked at
    return lines[0][len("sskt: error: "):]


SOURCE_BAD = [
    # (the second source of an SSKT method, the dotted key its error names, words of the error)
    ({"name": "s", "input_size": "big"}, "method.sources.1.input_size", "expected an integer, got 'big'"),
    ({"name": "s", "input_size": 0}, "method.sources.1.input_size", "must be >= 1, got 0"),
    ({"name": "s", "input_scale": "x"}, "method.sources.1.input_scale", "expected a number"),
    ({"name": "s", "temperature": 0}, "method.sources.1.temperature", "must be > 0, got 0"),
    ({"name": "s", "alpha": -1}, "method.sources.1.alpha", "must be >= 0, got -1"),
    ({"name": "s", "alpha": "high"}, "method.sources.1.alpha", "expected a number"),
    ({"name": "s", "num_classes": "ten"}, "method.sources.1.num_classes", "expected an integer"),
    ({"name": "s", "trust_pickle": "maybe"}, "method.sources.1.trust_pickle", "expected true or false"),
    ({"name": "s", "bn_mode": "batch"}, "method.sources.1.bn_mode", "must be 'eval' or 'train', got 'batch'"),
    ({"name": "s", "adapt": "linear"}, "method.sources.1.adapt", "must be 'none', 'probe' or 'features'"),
    ({"name": "s", "mean": "imagnet"}, "method.sources.1.mean", "unknown preset 'imagnet'"),
    ({"name": "s", "input_size": 32, "input_scale": 2}, "method.sources.1", "set input_size or input_scale, not both"),
    ({"name": "s", "inputsize": 32}, "method.sources.1", "unknown key(s) in method.sources.1: ['inputsize']; known:"),
    ({"arch": "cifar_resnet20"}, "method.sources.1.name", "required"),
    ({"name": "s", "kind": "modle"}, "method.sources.1.kind", "unknown source kind 'modle'; known: clustered, model"),
    ({"name": "s", "options": {"k": 3}}, "method.sources.1.options", "source kind 'model' has no options"),
    ("r32.pt", "method.sources.1", "expected a mapping, got 'r32.pt'"),
    # kind: clustered reads its options into ClusteredOptions (and options.data into a DataConfig)
    ({"name": "c", "kind": "clustered", "options": {**HOG, "k": "many"}}, "method.sources.1.options.k",
     "expected an integer, got 'many'"),
    ({"name": "c", "kind": "clustered", "options": {**HOG, "temperature": 0}}, "method.sources.1.options.temperature",
     "must be > 0"),
    ({"name": "c", "kind": "clustered", "options": {**HOG, "kk": 4}}, "method.sources.1.options",
     "unknown key(s) in method.sources.1.options: ['kk']; known:"),
    ({"name": "c", "kind": "clustered", "options": {**HOG, "data": {"per_class": 0}}},
     "method.sources.1.options.data.per_class", "must be >= 1, got 0"),
    ({"name": "c", "kind": "clustered", "options": {**HOG, "data": {"datset": "digits"}}},
     "method.sources.1.options.data", "unknown key(s) in method.sources.1.options.data: ['datset']"),
    ({"name": "c", "kind": "clustered", "options": "hog"}, "method.sources.1.options", "expected a mapping"),
]


def test_unknown_source_key_lists_the_known_ones():
    with pytest.raises(SSKTError) as err:
        check_method({"name": "sskt", "sources": [{"name": "s", "chekpoint": "r32.pt"}]})
    known = re.search(r"known: (\[.*\])", str(err.value)).group(1)
    assert yaml.safe_load(known) == sorted(f.name for f in dataclasses.fields(SourceConfig))


CACHE_BAD = [
    ({"views": 0}, "method.cache.views", "must be >= 1, got 0"),
    ({"topk": "ten"}, "method.cache.topk", "expected an integer, got 'ten'"),
    ({"chunk": 0}, "method.cache.chunk", "must be >= 1"),
    ({"batch_size": -1}, "method.cache.batch_size", "must be >= 1"),
    ({"verify": -1}, "method.cache.verify", "must be >= 0"),
    ({"mode": "fuzzy"}, "method.cache.mode", "must be 'exact' or 'clean', got 'fuzzy'"),
    ({"dir": ["a"]}, "method.cache.dir", "expected a string"),
    ({"mode": "exact", "k": 3}, "method.cache", "unknown key(s) in method.cache: ['k']; known: ['batch_size', "),
    ("exact", "method.cache", "expected a mapping, got 'exact'"),
]


TEACHER = {"arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}
TEACHER_BAD = [
    ({**TEACHER, "input_size": "x"}, "method.teacher.input_size", "expected an integer, got 'x'"),
    ({**TEACHER, "temperature": 0}, "method.teacher.temperature", "must be > 0"),
    ({**TEACHER, "pretrained": [1]}, "method.teacher.pretrained", "expected true or false or a string"),
    ({**TEACHER, "bn_mode": "x"}, "method.teacher.bn_mode", "must be 'eval' or 'train'"),
    ({**TEACHER, "kind": "x"}, "method.teacher.kind", "unknown source kind 'x'"),
    ({**TEACHER, "chekpoint": "t.pt"}, "method.teacher", "unknown key(s) in method.teacher: ['chekpoint']; known:"),
    ("t.pt", "method.teacher", "expected a mapping, got 't.pt'"),
]


# (a method section with one bad nested value, the dotted key its error names, words of the error)
METHOD_BAD = [
    *[({"name": "sskt", "sources": [GOOD_SOURCE, source]}, key, words) for source, key, words in SOURCE_BAD],
    *[({"name": "sskt", "sources": [GOOD_SOURCE], "cache": cache}, key, words) for cache, key, words in CACHE_BAD],
    *[({"name": "kd", "teacher": teacher}, key, words) for teacher, key, words in TEACHER_BAD],
]


@pytest.mark.parametrize("method,key,words", METHOD_BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(METHOD_BAD)])
def test_bad_nested_option_is_one_error_naming_its_key(tmp_path, capsys, method, key, words):
    with pytest.raises(SSKTError) as err:
        check_method(method)
    message = str(err.value)
    assert "\n" not in message and _names(message, key) and words in message, message
    assert _cli_error(tmp_path, capsys, method) == message  # the same line from `sskt train`, before the data


def test_kd_teacher_is_still_required_and_named_teacher_by_default():
    for empty in ({}, None):
        with pytest.raises(SSKTError, match="method kd needs method.teacher"):
            check_method({"name": "kd", "teacher": empty})
    with pytest.raises(SSKTError, match="method kd needs method.teacher"):
        check_method({"name": "kd"})
    from sskt.methods.base import parse_options
    from sskt.methods.kd import KDOptions

    assert parse_options(KDOptions, {"teacher": TEACHER}).teacher == SourceConfig("teacher", **TEACHER)
    assert parse_options(KDOptions, {"teacher": {**TEACHER, "name": "t"}}).teacher.name == "t"


SCRATCH = {"name": "a", "method": {"name": "scratch"}}
COMPARE_BAD = [
    ({"variants": [SCRATCH, {"name": "b", "method": "kd"}]}, "variants.1.method", "expected a mapping, got 'kd'"),
    ({"variants": [SCRATCH, {"name": "b", "method": {"name": "kd"}}, {"name": "c"}]}, "variants.2.method",
     "required"),
    ({"variants": [SCRATCH, {"method": {"name": "scratch"}}]}, "variants.1.name", "required"),
    ({"variants": [{**SCRATCH, "overides": ["train.epochs=1"]}]}, "variants.0",
     "unknown key(s) in variants.0: ['overides']; known: ['method', 'name', 'overrides']"),
    ({"variants": [{**SCRATCH, "overrides": "train.epochs=1"}]}, "variants.0.overrides",
     "expected a list or a mapping"),
    ({"variants": [SCRATCH, {"name": "b", "method": {"name": "scratch", "focal_gamma": "x"}}]},
     "variants.1.method.focal_gamma", "expected a number, got 'x'"),
    ({"variants": [SCRATCH, {"name": "b", "method": {"name": "sskt", "sources": [{"name": "s", "alpha": "x"}]}}]},
     "variants.1.method.sources.0.alpha", "expected a number, got 'x'"),
    ({"variants": [SCRATCH, {"name": "b", "method": {"name": "kd", "teacher": {"arch": "x", "input_size": "y"}}}]},
     "variants.1.method.teacher.input_size", "expected an integer"),
    ({"variants": [SCRATCH, {"name": "b", "method": {"name": "sskt", "sources": [GOOD_SOURCE], "cache": {"views": 0}}}]},
     "variants.1.method.cache.views", "must be >= 1"),
    ({"variants": [SCRATCH, {"name": "b", "method": {"nme": "scratch"}}]}, "variants.1.method.name", "is required"),
    ({"variants": [SCRATCH, SCRATCH]}, "variants", "names must be unique folder names"),
    ({"variants": []}, "variants", "list at least one variant"),
    ({"variants": "a"}, "variants", "expected a list, got 'a'"),
    ({"variants": [SCRATCH], "seeds": "abc"}, "seeds", "expected a list or an integer, got 'abc'"),
    ({"variants": [SCRATCH], "seeds": 0}, "seeds", "must be >= 1, got 0"),
    ({"variants": [SCRATCH], "seeds": []}, "seeds", "list at least one seed"),
    ({"variants": [SCRATCH], "base": [1]}, "base", "expected a mapping"),
    ({"variants": [SCRATCH], "variant": []}, "comparison", "unknown key(s): ['variant']; known: ['base', 'name', "),
]


@pytest.mark.parametrize("raw,key,words", COMPARE_BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(COMPARE_BAD)])
def test_bad_comparison_file_is_one_error_naming_its_key(tmp_path, capsys, raw, key, words):
    with pytest.raises(SSKTError) as err:
        CompareConfig.from_dict(raw)
    message = str(err.value)
    assert "\n" not in message and message.startswith("comparison: ") and words in message, message
    assert _names(message, key), message

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["compare", str(path)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert err_lines == [f"sskt: error: {path}: {message[len('comparison: '):]}"], err_lines
    assert not (tmp_path / "runs").exists()


def test_lax_values_in_nested_options_keep_working():
    """As in the sections: YAML 1.1's ``1e-1`` string is a number, ``32.0`` an int, a number a text."""
    method = yaml.safe_load("name: sskt\nsources: [{name: 7, arch: cifar_resnet20, input_size: 32.0, "
                            "temperature: 1e-1}]\ncache: {views: 4.0}\n")
    from sskt.methods.base import parse_options
    from sskt.methods.sskt import SSKTOptions

    opts = parse_options(SSKTOptions, {k: v for k, v in method.items() if k != "name"})
    (src,) = opts.sources
    assert (src.name, src.input_size, src.temperature) == ("7", 32, 0.1) and isinstance(src.input_size, int)
    assert opts.cache == CacheSpec(views=4)
    clustered = source_config({"name": "c", "kind": "clustered", "options": {**HOG, "temperature": "5e-2"}})
    assert clustered.options.temperature == 0.05 and clustered.options.data.dataset == "digits"
    assert isinstance(clustered.options, ClusteredOptions)


FILES = sorted([*ROOT.glob("src/sskt/recipes/*.yaml"), *ROOT.glob("benchmarks/*.yaml")])


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_every_config_and_benchmark_file_still_loads(path: Path):
    raw = yaml.safe_load(path.read_text())
    if "variants" in raw:
        grid = CompareConfig.from_yaml(path)
        runs = [grid.run_config(v, seed) for v in grid.variants for seed in grid.seeds]
    else:
        runs = [ExperimentConfig.from_yaml(path)]
    for run in runs:
        check_method(run.method)
        for i, source in enumerate(run.method.get("sources", [])):
            # A valid source reads as it did before it was validated (the same values, now typed).
            parsed = source_config(source, f"method.sources.{i}")
            raw_options = source.get("options") or {}
            as_given = dataclasses.asdict(SourceConfig(**{**source, "options": {}}))
            assert {**dataclasses.asdict(parsed), "options": {}} == as_given
            for key, value in raw_options.items():  # a kind's options, now its dataclass: the same scalars
                if not isinstance(value, dict):
                    assert getattr(parsed.options, key) == value, key
