"""``adapt: probe``: a source's classifier replaced by a linear probe on the target's labelled images."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sskt.data.augment import to_float
from sskt.data.tensor_dataset import ImageTensorDataset
from sskt.errors import SSKTError
from sskt.models.factory import create_model
from sskt.sources.adapt import WEIGHT_DECAYS, adapt_with_probe
from sskt.sources.cache_keys import CacheSpec, cache_key, source_fingerprint
from sskt.sources.source import Source

CLASSES = 4
COLOURS = torch.tensor([[230, 30, 30], [30, 230, 30], [30, 30, 230], [200, 200, 40]], dtype=torch.float)


def _data(per_class: int, seed: int, noise: float = 25.0) -> ImageTensorDataset:
    """Images of a class colour plus noise, 8x8 (separable at the default noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    x = COLOURS[y][:, :, None, None] + noise * torch.randn(len(y), 3, 8, 8, generator=g)
    return ImageTensorDataset(x.clamp(0, 255).round().byte(), y)


def _source(seed: int = 0, classes: int = 100) -> Source:
    torch.manual_seed(seed)
    return Source("s", create_model("cifar_resnet20", classes), classes, input_size=8,
                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _accuracy(src: Source, data: ImageTensorDataset) -> float:
    with torch.no_grad():
        return 100.0 * float((src(to_float(data.images)).argmax(1) == data.targets).float().mean())


def test_probe_replaces_the_classifier_and_nothing_else():
    src = _source()
    before = {k: v.clone() for k, v in src.network.state_dict().items()}
    old_head = src.network.linear
    train, test = _data(10, 0), _data(10, 1)
    info = adapt_with_probe(src, train)
    assert src.num_classes == CLASSES
    assert src(torch.rand(3, 3, 8, 8)).shape == (3, CLASSES)
    head = src.network.linear
    assert head is not old_head and isinstance(head, nn.Linear) and head.out_features == CLASSES
    assert head.in_features == old_head.in_features
    assert not any(p.requires_grad for p in src.parameters())
    after = src.network.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("linear."))
    assert "val_top1" not in info and info["weight_decay"] in WEIGHT_DECAYS
    assert _accuracy(src, test) >= 90.0  # the adapted source predicts the target's classes


def test_probe_fit_is_deterministic_so_the_cache_key_is_stable():
    train = _data(10, 0)
    a, b = _source(seed=0), _source(seed=0)
    torch.manual_seed(123)  # the training seed must not matter
    adapt_with_probe(a, train, _data(5, 2))
    torch.manual_seed(456)
    adapt_with_probe(b, train, _data(5, 2))
    wa, wb = a.network.state_dict(), b.network.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    key = lambda s: cache_key("d", source_fingerprint(s, "fp32"), CacheSpec(), 3.0, 4, True)[0]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(_source(seed=0))  # the adapted classifier is part of the key


def test_validation_split_chooses_the_penalty_and_reports_the_adapted_sources_accuracy():
    src = _source()
    val = _data(15, 3, noise=150.0)  # noisy: the probe is right on some of them only (about 70%)
    info = adapt_with_probe(src, _data(10, 0, noise=150.0), val)
    assert info["weight_decay"] in WEIGHT_DECAYS
    assert 30.0 < info["val_top1"] < 100.0
    assert info["train_images"] == 40
    # the folded probe (standardisation inside the Linear) scores exactly what the probe scored
    assert info["val_top1"] == pytest.approx(_accuracy(src, val), abs=1e-3)


def test_probe_picks_the_best_penalty_on_validation(monkeypatch):
    import sskt.sources.adapt as adapt
    from sskt.evaluation.probes import linear_probe

    def rigged(x, y, vx, vy, weight_decay, **kw):
        res = linear_probe(x, y, vx, vy, weight_decay=weight_decay, **kw)
        res.test_top1 = 0.5 if weight_decay == 0.3 else 0.25  # 0.3 is best on the validation split
        return res

    monkeypatch.setattr(adapt, "linear_probe", rigged)
    info = adapt_with_probe(_source(), _data(5, 0), _data(3, 1))
    assert info["weight_decay"] == 0.3 and info["val_top1"] == pytest.approx(50.0)


def test_multilabel_targets_and_headless_sources_are_one_line_errors():
    data = _data(5, 0)
    multilabel = ImageTensorDataset(data.images, nn.functional.one_hot(data.targets, CLASSES).float())
    with pytest.raises(SSKTError, match="single-label") as err:
        adapt_with_probe(_source(), multilabel)
    assert "\n" not in str(err.value)

    headless = Source("h", nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4,
                      input_size=8)
    with pytest.raises(SSKTError, match="nn.Linear") as err:
        adapt_with_probe(headless, data)
    assert "\n" not in str(err.value)
