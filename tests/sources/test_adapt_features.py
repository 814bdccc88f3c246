"""``adapt: features``: a source outputs its standardised penultimate embedding, which SSKT's head regresses."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sskt.config import ExperimentConfig
from sskt.data.augment import apply_view, to_float
from sskt.data.datasets import load_data
from sskt.engine.run import build_context, evaluate, fit, load_trained
from sskt.errors import SSKTError
from sskt.methods import build_method
from sskt.models.factory import create_model
from sskt.sources.adapt import Standardize, features_and_logits, fit_standardizer_in_place, make_room_for_features
from sskt.sources.cache_keys import CacheSpec, cache_key, source_fingerprint
from sskt.sources.source import Source
from testutils import tiny_config


def _source(seed: int = 0) -> Source:
    torch.manual_seed(seed)
    return Source("s", create_model("cifar_resnet20", 100), 100, input_size=8, mean=(0.5,) * 3, std=(0.25,) * 3)


def _images(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_the_adapted_source_outputs_its_embedding_standardised_on_the_given_images():
    images = _images()
    plain = _source()
    embedding, _ = features_and_logits(plain, images)  # (40, 64): what the classifier reads
    src = _source()
    trunk = {k: v.clone() for k, v in src.network.state_dict().items() if not k.startswith("linear.")}
    rng = torch.random.get_rng_state()
    make_room_for_features(src)
    assert torch.equal(torch.random.get_rng_state(), rng)  # draws nothing: the target built next is unchanged
    assert src.outputs == "features" and src.num_classes == 64 and isinstance(src.network.linear, Standardize)
    info = fit_standardizer_in_place(src, images)
    assert info["images"] == 40 and info["dim"] == 64
    with torch.no_grad():
        out = src(to_float(images))
    std = embedding.std(0).clamp_min(0.1 * float(embedding.std(0).mean()))
    torch.testing.assert_close(out, (embedding - embedding.mean(0)) / std, atol=1e-4, rtol=1e-4)
    varying = embedding.std(0) >= 0.1 * float(embedding.std(0).mean())
    torch.testing.assert_close(out[:, varying].std(0), torch.ones(int(varying.sum())), atol=1e-4, rtol=1e-4)
    after = src.network.state_dict()
    assert all(torch.equal(after[k], v) for k, v in trunk.items())  # only the classifier was replaced
    assert not any(p.requires_grad for p in src.parameters())


def test_the_standardisation_is_part_of_the_cache_key():
    spec = CacheSpec(mode="exact", views=2)
    plain, adapted = _source(), _source()
    make_room_for_features(adapted)
    key = lambda s: cache_key("data", source_fingerprint(s, "fp32"), spec, 3.0, 1, False)[0]  # noqa: E731
    unfitted = key(adapted)
    fit_standardizer_in_place(adapted, _images())
    assert len({key(plain), unfitted, key(adapted)}) == 3


def test_a_headless_source_is_one_line():
    headless = Source("h", nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4, input_size=8)
    with pytest.raises(SSKTError, match="adapt: features") as err:
        make_room_for_features(headless)
    assert "\n" not in str(err.value)


SOURCE = {"name": "s", "arch": "cifar_resnet20", "num_classes": 7, "input_size": 8, "adapt": "features"}


def _method(cache_dir, **extra) -> dict:
    return {"name": "sskt", "head": "transfer", "alpha": 1.0, "source_precision": "fp32", "sources": [SOURCE],
            "cache": {"mode": "exact", "views": 2, "dir": str(cache_dir)}, **extra}


def test_sskt_regresses_the_stored_embedding_end_to_end(tmp_path):
    cache = tmp_path / "cache"
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, method=_method(cache)))
    ctx = build_context(cfg, load_data(cfg.data))
    method = build_method(cfg.method, ctx)
    assert method.sources[0].num_classes == 64
    method.prepare(ctx)
    # The cache keeps every feature of every view, as the live source computes it (fp16 storage).
    images = ctx.train_data.images
    index = torch.arange(0, len(images), 7)
    view = method.cache.views[index, 1]
    stored = method.cache.lookup(index, view, device="cpu")["s"]
    with torch.no_grad():
        live = method.sources[0](to_float(apply_view(images[index], view, method.cache.padding)))
    assert stored.shape == live.shape == (len(index), 64)
    torch.testing.assert_close(stored, live, atol=2e-2, rtol=1e-2)
    # The auxiliary loss is the regression of that embedding: 1.0 + (what the head adds) at the start.
    batch = {"image": to_float(apply_view(images[index], view, method.cache.padding)),
             "target": ctx.train_data.targets[index], "soft_labels": {"s": stored}}
    out = method.training_step(batch)
    predicted = method.aux_predictions(method.target.forward_features(batch["image"]))["s"]
    assert float(out.losses["aux/s"].detach()) == pytest.approx(float((predicted - stored).pow(2).mean()), rel=1e-4)

    result = fit(cfg)
    assert set(result.record["adapted/s"]) == {"images", "dim", "constant_features"}  # no top-1 for an embedding
    _, rebuilt = load_trained(result.checkpoint)  # evaluate/export rebuild the run without fitting anything
    assert rebuilt.sources[0].outputs == "features"
    assert evaluate(result.checkpoint)["value"] == pytest.approx(result.final, abs=1e-3)


@pytest.mark.parametrize("method, says", [
    ({"name": "sskt", "head": "main", "sources": [SOURCE]}, "head: main needs"),
    ({"name": "kd", "teacher": SOURCE}, "adapt: features (its embedding) is for method sskt"),
])
def test_an_embedding_cannot_teach_the_main_head(tmp_path, method, says):
    cfg = ExperimentConfig.from_dict(tiny_config(tmp_path, method=method))
    with pytest.raises(SSKTError, match=says.replace("(", r"\(").replace(")", r"\)")) as err:
        build_method(cfg.method, build_context(cfg, load_data(cfg.data)))
    assert "\n" not in str(err.value)
