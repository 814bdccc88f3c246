"""Checkpoints in every common shape load; ones that don't fit say why in one line."""
import pytest
import torch

from sskt.errors import SSKTError
from sskt.models.factory import create_model
from sskt.sources import build_source, load_network

from testutils import CIFAR_RESNETS, need


def _same(a, b):
    x = torch.rand(2, 3, 32, 32)
    a.eval(), b.eval()
    return torch.allclose(a(x), b(x))


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict", "state_dict+module"])
def test_state_dict_variants(tmp_path, wrap):
    net = create_model("cifar_resnet20", 7)
    state = net.state_dict()
    if "module" in wrap:
        state = {f"module.{k}": v for k, v in state.items()}
    obj = {"state_dict": state, "epoch": 3} if wrap.startswith("state_dict") else state
    torch.save(obj, tmp_path / "c.pt")
    loaded = load_network("cifar_resnet20", tmp_path / "c.pt")
    assert loaded.num_classes == 7  # read from the classifier
    assert _same(loaded.module, net)


def test_key_mismatch_names_keys(tmp_path):
    torch.save(create_model("cifar_resnet20", 10).state_dict(), tmp_path / "c.pt")
    with pytest.raises(SSKTError, match=r"missing keys: .*layer1\.3.*"):
        load_network("cifar_resnet32", tmp_path / "c.pt")
    state = create_model("cifar_resnet20", 10).state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "d.pt")
    with pytest.raises(SSKTError, match="unexpected keys: extra.weight"):
        load_network("cifar_resnet20", tmp_path / "d.pt")


def test_pickled_module_needs_trust_flag(tmp_path):
    net = create_model("cifar_resnet20", 10)
    torch.save(net, tmp_path / "whole.pt")
    with pytest.raises(SSKTError, match="trust_pickle: true"):
        load_network(None, tmp_path / "whole.pt")
    loaded = load_network(None, tmp_path / "whole.pt", trust_pickle=True)
    assert _same(loaded.module, net) and loaded.num_classes == 10
    # a whole module gives no input size: the source must be told
    with pytest.raises(SSKTError, match="input_size"):
        build_source({"name": "w", "checkpoint": str(tmp_path / "whole.pt"), "trust_pickle": True, "mean": "imagenet",
                      "std": "imagenet"})
    src = build_source({"name": "w", "checkpoint": str(tmp_path / "whole.pt"), "trust_pickle": True,
                        "mean": "imagenet", "std": "imagenet", "input_size": 32})
    assert src(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_sskt_model_file_roundtrip(tmp_path):
    from sskt.models import TargetNetwork

    t = TargetNetwork("cifar_resnet20", 4)
    t.save(tmp_path / "target.pt", classes=list("abcd"))
    loaded = load_network(None, tmp_path / "target.pt")
    assert loaded.arch == "cifar_resnet20" and loaded.classes == list("abcd") and loaded.input_size == 32
    assert _same(loaded.module, t.model)


def test_shared_cifar_checkpoints_load_by_name_and_file():
    for depth, path in CIFAR_RESNETS.items():
        net = load_network(f"cifar_resnet{depth}", need(path))
        assert net.num_classes == 10 and net.input_size == 32


@pytest.mark.parametrize("content, kind", [
    (b"<!DOCTYPE html><html><body>Sign in to download</body></html>", "an HTML page"),
    (bytes(range(7, 200)), "a file starting with"),
    (b"", "an empty file"),
])
def test_a_file_that_is_no_checkpoint_is_not_called_a_pickle(tmp_path, content, kind):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(SSKTError, match="is not a PyTorch checkpoint") as err:
        load_network("cifar_resnet20", str(path), num_classes=10)
    assert kind in str(err.value) and "trust_pickle" not in str(err.value)


def test_a_truncated_checkpoint_is_unreadable_not_untrusted(tmp_path):
    torch.save(create_model("cifar_resnet20", num_classes=10).state_dict(), tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:5000])
    with pytest.raises(SSKTError, match="not a readable PyTorch checkpoint") as err:
        load_network("cifar_resnet20", str(tmp_path / "cut.pth"), num_classes=10)
    assert "trust_pickle" not in str(err.value)


def test_a_pickled_target_checkpoint_says_how_to_save_weights_not_to_trust(tmp_path):
    from sskt.config import TargetConfig
    from sskt.methods.base import BuildContext

    torch.save(create_model("cifar_resnet20", num_classes=10), tmp_path / "whole.pth")
    ctx = BuildContext(num_classes=10, input_shape=(3, 32, 32), multilabel=False,
                       target=TargetConfig(checkpoint=str(tmp_path / "whole.pth")))
    with pytest.raises(SSKTError, match=r"must be a state_dict: torch.save\(model.state_dict"):
        ctx.build_target()
