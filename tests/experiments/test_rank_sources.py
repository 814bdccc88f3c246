"""`sskt rank-sources` end to end on digits: a trained source ranks above a random one."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from sskt.cli import main
from testutils import DIGITS_CHANCE, tiny_config


@pytest.fixture(scope="module")
def trained_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """target.pt of a ResNet-20 trained from scratch on digits for a few epochs."""
    from sskt.config import ExperimentConfig
    from sskt.engine.run import fit

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("pretrain")
    raw = tiny_config(out, data={"per_class": 30, "test_per_class": 20},
                      train={"epochs": 5, "batch_size": 32, "eval_every": 5, "accelerator": "cpu"})
    result = fit(ExperimentConfig.from_dict(raw))
    assert result.final > DIGITS_CHANCE
    return Path(raw["out_dir"]) / "target.pt"


def _config(tmp_path: Path, sources: list) -> Path:
    raw = tiny_config(tmp_path, method={"name": "sskt", "sources": sources}, train={"accelerator": "cpu"})
    path = tmp_path / "rank.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_trained_source_ranks_above_random_one(tmp_path: Path, trained_source: Path, capsys) -> None:
    sources = [{"name": "random", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8},
               {"name": "trained", "arch": "cifar_resnet20", "checkpoint": str(trained_source), "input_size": 8}]
    path = _config(tmp_path, sources)
    assert main(["rank-sources", str(path), "data.per_class=20"]) == 0
    out = capsys.readouterr().out
    assert "sorted by LogME" in out and "next: keep the top-ranked sources (e.g. 'trained')" in out
    table = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [row[1] for row in table] == ["trained", "random"]

    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "rank_sources.csv").open()))
    assert [r["name"] for r in rows] == ["trained", "random"] and [r["rank"] for r in rows] == ["1", "2"]
    saved = json.loads((run / "rank_sources.json").read_text())
    assert saved["sorted_by"] == "logme" and saved["dataset"] == "digits"
    best, worst = saved["sources"]
    assert best["logme"] > worst["logme"]
    assert best["leep"] > worst["leep"] and best["nce"] > worst["nce"]  # all three agree here
    assert best["leep"] <= 0 and best["nce"] <= 0
    assert best["feature_dim"] == 64 and best["source_classes"] == 10 and best["seconds"] >= 0


def test_scores_match_the_functions_on_the_same_outputs(tmp_path: Path, trained_source: Path) -> None:
    from sskt.config import ExperimentConfig
    from sskt.data.datasets import load_data
    from sskt.evaluation.transferability import leep, logme, nce
    from sskt.experiments.rank_sources import rank_sources
    from sskt.sources import build_source
    from sskt.sources.adapt import features_and_logits, penultimate_features

    entry = {"name": "trained", "arch": "cifar_resnet20", "checkpoint": str(trained_source), "input_size": 8}
    cfg = ExperimentConfig.from_yaml(str(_config(tmp_path, [entry])))
    [score] = rank_sources(cfg)
    train = load_data(cfg.data).train
    src = build_source(entry, 3)
    features, logits = features_and_logits(src, train.images)
    assert torch.allclose(features, penultimate_features(src, train.images), atol=1e-5)
    probs = torch.softmax(logits.double(), 1)
    assert score.logme == pytest.approx(logme(features, train.targets), abs=1e-6)
    assert score.leep == pytest.approx(leep(probs, train.targets), abs=1e-9)
    assert score.nce == pytest.approx(nce(probs, train.targets), abs=1e-9)


def test_no_sources_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    assert main(["rank-sources", str(path)]) == 2
    assert "needs method.sources" in capsys.readouterr().err


def test_a_clustered_hog_source_is_scored_on_its_teachers_features(tmp_path: Path) -> None:
    """A clustered source has no nn.Linear: LogME reads its teacher's (HOG) features, LEEP/NCE its k clusters."""
    from sskt.config import ExperimentConfig
    from sskt.experiments.rank_sources import rank_sources

    hog = {"name": "hog", "kind": "clustered", "input_size": 8, "temperature": 1,
           "options": {"teacher": "hog", "hog_cell": 4, "k": 6, "niter": 5, "data": {"dataset": "digits"},
                       "cache_dir": str(tmp_path / "clusters")}}
    cfg = ExperimentConfig.from_yaml(str(_config(tmp_path, [hog])))
    [score] = rank_sources(cfg)
    assert score.source_classes == 6 and score.feature_dim > 6  # HOG cells x orientations, not the 6 clusters
    assert all(map(lambda v: v == v and abs(v) < 1e6, (score.logme, score.leep, score.nce)))  # finite


def test_a_compare_grid_ranks_every_distinct_source_of_its_variants(tmp_path: Path, trained_source: Path,
                                                                     capsys) -> None:
    trained = {"name": "trained", "arch": "cifar_resnet20", "checkpoint": str(trained_source), "input_size": 8}
    random = {"name": "random", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}
    base = tiny_config(tmp_path, train={"accelerator": "cpu"})
    base.pop("method"), base.pop("name"), base.pop("seed")
    grid = {"name": "g", "out_dir": str(tmp_path / "grid"), "seeds": [0], "base": base, "variants": [
        {"name": "scratch", "method": {"name": "scratch"}},
        {"name": "one", "method": {"name": "sskt", "sources": [trained]}},
        {"name": "both", "method": {"name": "sskt", "sources": [trained, random]}}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main(["rank-sources", str(path), "data.per_class=20"]) == 0
    rows = list(csv.DictReader((tmp_path / "grid" / "rank_sources.csv").open()))
    assert [r["name"] for r in rows] == ["trained", "random"]  # each source once, best first

    grid["variants"][2]["method"]["sources"][1] = {**random, "name": "trained"}
    path.write_text(yaml.safe_dump(grid))
    assert main(["rank-sources", str(path)]) == 2
    assert "two different sources are named 'trained'" in capsys.readouterr().err
