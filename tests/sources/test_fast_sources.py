"""The fast source path (bf16 autocast + channels_last) gives the same soft labels as fp32, on real images."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sskt.data.augment import to_float
from sskt.sources.bank import SourceBank, bf16_supported
from sskt.sources.source import build_source
from testutils import CIFAR_JPEG, CIFAR_RESNETS

R32 = CIFAR_RESNETS[32]
T = 3.0
# Documented tolerance (docs/speed.md): batch-mean KL(fp32 || bf16) at T = 3.
KL_TOLERANCE = 1e-3

needs_shared = pytest.mark.skipif(not (CIFAR_JPEG.is_dir() and R32.is_file()),
                                  reason="../shared (CIFAR-10 JPEG copy and CIFAR ResNet checkpoints) not present")


def _kl(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per-image KL(softmax(reference/T) || softmax(other/T))."""
    return F.kl_div(F.log_softmax(other / T, 1), F.log_softmax(reference / T, 1), log_target=True,
                    reduction="none").sum(1)


@pytest.fixture(scope="module")
def real_images() -> torch.Tensor:
    from sskt.config import DataConfig
    from sskt.data.datasets import load_data

    splits = load_data(DataConfig(dataset="imagefolder", root=str(CIFAR_JPEG), per_class=1, test_per_class=10))
    return to_float(splits.test.images)  # 100 real test images, 10 per class


def _banks(cfg: dict) -> tuple[SourceBank, SourceBank]:
    return SourceBank([build_source(cfg)], "fp32"), SourceBank([build_source(cfg)], "bf16")


@needs_shared
@pytest.mark.parametrize("size", [32, 74])
def test_bf16_channels_last_matches_fp32_on_cifar(real_images, size):
    cfg = {"name": "r32", "arch": "cifar_resnet32", "checkpoint": str(R32), "input_size": size}
    fp32, fast = _banks(cfg)
    x = real_images if size == 32 else real_images[::2]  # 74 px costs 5x more: 50 images suffice
    ref, out = fp32(x)["r32"], fast(x)["r32"]
    kl = _kl(ref, out)
    assert float(kl.mean()) < KL_TOLERANCE, f"mean KL {float(kl.mean()):.2e} (max {float(kl.max()):.2e})"
    assert float((ref.argmax(1) == out.argmax(1)).float().mean()) > 0.97


@needs_shared
def test_bf16_matches_fp32_for_a_resnet50_at_74px(real_images):
    torch.manual_seed(0)
    cfg = {"name": "r50", "arch": "resnet50", "num_classes": 365, "input_size": 74, "mean": "imagenet",
           "std": "imagenet"}
    fp32 = SourceBank([build_source(cfg)], "fp32")
    fast = SourceBank([build_source(cfg)], "bf16")
    fast.load_state_dict(fp32.state_dict())  # same random weights in both
    x = real_images[::10]
    kl = _kl(fp32(x)["r50"], fast(x)["r50"])
    assert float(kl.mean()) < KL_TOLERANCE, f"mean KL {float(kl.mean()):.2e} (max {float(kl.max()):.2e})"


def test_auto_precision_is_the_default_and_resolves_per_device():
    from sskt.methods.sskt import SSKTOptions
    from sskt.models.factory import create_model
    from sskt.sources.source import Source

    assert SSKTOptions(sources=[{"name": "a"}]).source_precision == "auto"
    cpu = torch.device("cpu")
    dense = Source("dense", create_model("cifar_resnet20", 10), 10, input_size=32)
    depthwise = Source("dw", torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, groups=3), torch.nn.Flatten(),
                                                 torch.nn.Linear(3 * 30 * 30, 10)), 10, input_size=32)
    auto = SourceBank([dense, depthwise], "auto")
    assert auto.resolved_precision(dense, cpu) == ("bf16" if bf16_supported(cpu) else "fp32")
    # Depthwise convolutions are slow in bf16 on CPUs: auto keeps such sources in fp32 there.
    assert auto.resolved_precision(depthwise, cpu) == "fp32"
    assert SourceBank([dense], "fp32").resolved_precision(dense, cpu) == "fp32"
