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


def test_export_has_main_head_only():
    target = TargetNetwork("cifar_resnet20", 10)
    exported = target.export()
    x = torch.rand(2, 3, 32, 32)
    target.eval()
    assert torch.allclose(exported(x), target(x))
    assert not any("aux" in k or "heads" in k for k in exported.state_dict())
