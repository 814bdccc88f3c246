"""Auxiliary heads and the stages they tap, on several architectures."""
import pytest
import torch

from sskt.models import LinearHead, TargetNetwork, TransferModule
from sskt.models.factory import create_model
from sskt.methods.sskt import make_head


def test_linear_head_shape():
    assert LinearHead(64, 365)(torch.zeros(3, 64), []).shape == (3, 365)


def test_transfer_module_2d_shape_and_branch_outputs():
    head = TransferModule([16, 32, 64], width=64, num_classes=1000)
    feats = [torch.zeros(2, 16, 32, 32), torch.zeros(2, 32, 16, 16), torch.zeros(2, 64, 8, 8)]
    assert head(None, feats).shape == (2, 1000)
    # stride-2 3x3 conv inside each branch halves the map: 32->16, 16->8, 8->4 (as in the reference)
    assert [tuple(b(f).shape[2:]) for b, f in zip(head.branches, feats)] == [(16, 16), (8, 8), (4, 4)]


def test_transfer_module_3d_shape():
    head = TransferModule([8, 16], width=32, num_classes=10, dims=3)
    out = head(None, [torch.zeros(2, 8, 4, 8, 8), torch.zeros(2, 16, 2, 4, 4)])
    assert out.shape == (2, 10)


@pytest.mark.parametrize(
    "arch, size, stages, channels",
    [
        ("cifar_resnet20", 32, ["layer1", "layer2", "layer3"], [16, 32, 64]),
        ("resnet18", 64, ["layer1", "layer2", "layer3", "layer4"], [64, 128, 256, 512]),
        ("timm:resnet10t", 64, None, [64, 64, 128, 256, 512]),
    ],
)
def test_transfer_head_taps_intended_stages(arch, size, stages, channels):
    target = TargetNetwork(arch, num_classes=10)
    if stages is not None:
        assert target.stage_names == stages
    example = torch.rand(2, 3, size, size)
    head = make_head("transfer", target, example, num_classes=365, width=None)
    feats = target.forward_features(example)
    assert [f.shape[1] for f in feats.stages] == channels
    assert [b[0].in_channels for b in head.branches] == channels
    assert head(feats.pooled, feats.stages).shape == (2, 365)
    # the target's own prediction is untouched by tapping
    target.eval()
    assert torch.allclose(target(example), target.forward_features(example).logits)


def test_default_transfer_width():
    t = TargetNetwork("cifar_resnet20", 10)
    assert make_head("transfer", t, torch.rand(2, 3, 32, 32), 10, None).fc.in_features == 64  # reference width
    t = TargetNetwork("resnet18", 10)
    assert make_head("transfer", t, torch.rand(2, 3, 64, 64), 10, None).fc.in_features == 256  # capped


def test_cifar_resnet_parameter_counts():
    counts = {d: sum(p.numel() for p in create_model(f"cifar_resnet{d}", 10).parameters()) for d in (20, 56, 110)}
    assert round(counts[20] / 1e6, 2) == 0.27
    assert round(counts[56] / 1e6, 2) == 0.85
    assert round(counts[110] / 1e6, 1) == 1.7


def test_export_of_a_target_with_transfer_heads_is_its_main_head_alone():
    """SSKT's transfer heads read the target's stages through hooks on its modules: the export keeps the
    target's own weights and outputs, and none of the heads' weights or the taps' hooks."""
    from sskt.methods.sskt import SSKT, SSKTOptions
    from sskt.sources.source import Source

    torch.manual_seed(0)
    target = TargetNetwork("cifar_resnet20", 10)
    source = Source("s", create_model("cifar_resnet20", 100), 100, input_size=32)
    method = SSKT(target, [source], SSKTOptions(sources=[{"name": "s"}], head="transfer"),
                  example=torch.rand(1, 3, 32, 32))
    x = torch.rand(4, 3, 32, 32)
    method.train()
    sum(method.training_step({"image": x, "target": torch.arange(4)}).losses.values()).backward()
    assert any(k.startswith("heads.") for k in method.state_dict())  # there are heads to leave out
    assert any(m._forward_hooks for m in target.model.modules())  # and hooks on the target's stages

    exported = target.export()
    plain = create_model("cifar_resnet20", 10).state_dict()
    assert set(exported.state_dict()) == {"normalize.mean", "normalize.std", *(f"model.{k}" for k in plain)}
    own = target.model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in exported.model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in exported.modules())
    target.eval()
    assert not exported.training and torch.allclose(exported(x), target(x))


def test_main_head_mode_distils_into_the_main_head():
    """head: main adds no auxiliary head: the source's soft labels are the main head's KD target."""
    from sskt.errors import SSKTError
    from sskt.losses import kd_loss
    from sskt.methods.sskt import SSKT, SSKTOptions
    from sskt.models.factory import create_model
    from sskt.sources.source import Source

    torch.manual_seed(0)
    target = TargetNetwork("cifar_resnet20", 10)
    src = Source("s", create_model("cifar_resnet20", 10), 10, input_size=32)
    method = SSKT(target, [src], SSKTOptions(sources=[{"name": "s"}], head="main", alpha=0.5, temperature=2.0),
                  example=torch.rand(1, 3, 32, 32))
    assert len(method.heads) == 0
    target.eval()  # BatchNorm in eval: the hand computation below sees the same logits
    x = torch.rand(4, 3, 32, 32)
    out = method.training_step({"image": x, "target": torch.arange(4)})
    expected = 0.5 * kd_loss(target(x), src(x), 2.0)
    assert torch.allclose(out.losses["aux/s"], expected, atol=1e-5)
    foreign = Source("f", create_model("cifar_resnet20", 100), 100, input_size=32)
    with pytest.raises(SSKTError, match="head: main needs .*adapt: probe"):
        SSKT(target, [foreign], SSKTOptions(sources=[{"name": "f"}], head="main"), example=torch.rand(1, 3, 32, 32))
