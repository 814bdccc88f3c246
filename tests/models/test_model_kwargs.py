"""target.model_kwargs and a source's model_kwargs reach timm.create_model, as timm's own users pass them."""
import pytest
from torch import nn

from sskt.config import ExperimentConfig
from sskt.errors import SSKTError
from sskt.methods.base import BuildContext
from sskt.sources.source import build_source, source_config

from testutils import tiny_config

DROPS = ["target.arch=timm:resnet10t", "target.model_kwargs={drop_rate: 0.3, drop_path_rate: 0.1}"]


def _target(tmp_path, overrides):
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path)).with_overrides(overrides)
    return BuildContext(num_classes=10, input_shape=(3, 32, 32), multilabel=False, target=cfg.target).build_target()


def _drop_path(model: nn.Module) -> list[float]:
    return [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]


def test_target_is_built_with_the_given_dropout_and_drop_path(tmp_path):
    net = _target(tmp_path, DROPS)
    assert net.model.drop_rate == 0.3
    assert max(_drop_path(net.model)) == pytest.approx(0.1)  # timm's stochastic depth rises to drop_path_rate
    assert net.export().model.drop_rate == 0.3  # the exported copy is the same network
    assert _target(tmp_path, DROPS[:1]).model.drop_rate == 0.0 and not _drop_path(_target(tmp_path, DROPS[:1]).model)


@pytest.mark.parametrize("overrides, says", [
    (["target.arch=timm:resnet10t", "target.model_kwargs={drop_rat: 0.3}"], "'timm:resnet10t' does not take 'drop_rat'"),
    (["target.model_kwargs={drop_rate: 0.3}"], "'cifar_resnet20' does not take drop_rate"),
    (["target.arch=timm:resnet10t", "target.model_kwargs={num_classes: 3}"], "num_classes is set by sskt"),
])
def test_a_key_the_architecture_does_not_take_is_one_line(tmp_path, overrides, says):
    with pytest.raises(SSKTError, match="model_kwargs") as err:
        _target(tmp_path, overrides)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_source_is_built_with_its_model_kwargs():
    src = build_source({"name": "s", "arch": "timm:resnet10t", "num_classes": 10, "input_size": 32,
                        "model_kwargs": {"drop_rate": 0.25, "drop_path_rate": 0.05}})
    assert src.network.drop_rate == 0.25 and max(_drop_path(src.network)) == pytest.approx(0.05)
    plain = build_source({"name": "s", "arch": "timm:resnet10t", "num_classes": 10, "input_size": 32})
    assert plain.fingerprint != src.fingerprint  # a soft-label cache tells them apart
    with pytest.raises(SSKTError, match="does not take 'drop'"):
        build_source({"name": "s", "arch": "timm:resnet10t", "num_classes": 10, "model_kwargs": {"drop": 1}})
    with pytest.raises(SSKTError, match=r"method.sources.0.model_kwargs: a 'clustered' source"):
        source_config({"name": "c", "kind": "clustered", "model_kwargs": {"drop_rate": 0.1}}, "method.sources.0")
