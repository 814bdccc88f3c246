"""The model card beside an export opens with the front matter the Hugging Face Hub reads: pushed as it is,
the Hub lists the model under sskt, its task and dataset, with the run's final test accuracy."""
import sys

import pytest
import yaml

from sskt.config import ExperimentConfig
from sskt.engine.export import export
from sskt.engine.run import fit
from sskt.models.target import TargetNetwork

from testutils import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch KD run on digits (a teacher file of the same classes), exported as model.pt."""
    tmp = tmp_path_factory.mktemp("card-run")
    teacher = TargetNetwork("cifar_resnet20", 10).save(tmp / "teacher.pt")
    raw = tiny_config(tmp, method={"name": "kd", "evaluate_teacher": False,
                                   "teacher": {"checkpoint": str(teacher), "input_size": 8}})
    result = fit(ExperimentConfig.from_dict(raw))
    return result, export(result.checkpoint, tmp / "model.pt").card


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, body = text[len("---\n"):].partition("\n---\n")
    assert body.lstrip().startswith("# Model card: model.pt")  # the card itself follows, as before
    return yaml.safe_load(head)


def test_front_matter_names_library_task_dataset_and_final_accuracy(run):
    result, card = run
    meta = _front_matter(card.read_text())
    assert meta["library_name"] == "sskt" and meta["pipeline_tag"] == "image-classification"
    assert {"image-classification", "knowledge-distillation", "sskt", "kd"} <= set(meta["tags"])
    assert meta["datasets"] == ["digits"] and meta["metrics"] == ["accuracy"]
    assert "license" not in meta  # not known from the run: the user adds theirs
    (entry,) = meta["model-index"]
    (scored,) = entry["results"]
    assert entry["name"] == "t" and scored["task"]["type"] == "image-classification"
    assert scored["dataset"]["name"] == "digits"
    (metric,) = scored["metrics"]
    assert metric["type"] == "accuracy" and metric["value"] == result.final  # result.json's final, in percent


def test_huggingface_hub_reads_the_card(run):
    hub = pytest.importorskip("huggingface_hub")
    result, card = run
    loaded = hub.ModelCard.load(card)
    assert loaded.data.library_name == "sskt" and "knowledge-distillation" in loaded.data.tags
    (score,) = loaded.data.eval_results
    assert score.metric_type == "accuracy" and score.metric_value == result.final
    assert score.dataset_name == "digits" and score.task_type == "image-classification"


def test_without_huggingface_hub_the_front_matter_says_the_same(run, tmp_path, monkeypatch):
    result, card = run
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails
    by_hand = export(result.checkpoint, tmp_path / "model.pt").card
    assert _front_matter(by_hand.read_text()) == _front_matter(card.read_text())
