"""Soft-label cache: keys, agreement with live sources, resumable builds, damage detection, SSKT integration."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor
import pytest

from sskt.config import TargetConfig
from sskt.data.augment import apply_view, to_float
from sskt.data.views import TrainingViews
from sskt.errors import SSKTError
from sskt.methods.base import BuildContext
from sskt.methods.sskt import SSKT
from sskt.models.factory import create_model
from sskt.sources.bank import SourceBank
from sskt.sources.cache import SoftLabelCache
from sskt.sources.cache_file import compress_logits, expand_logits
from sskt.sources.cache_keys import CacheSpec, cache_key, cache_spec, source_fingerprint
from sskt.sources.source import Source
from sskt.data.tensor_dataset import ImageTensorDataset

T = 3.0


def _source(name: str = "a", classes: int = 10, size: int = 16, seed: int = 0, mean=(0.5, 0.5, 0.5)) -> Source:
    torch.manual_seed(seed)
    net = create_model("cifar_resnet20", classes)
    with torch.no_grad():  # random nets give huge logits; scale the classifier to realistic ones
        net.linear.weight.mul_(0.02)
    return Source(name, net, classes, input_size=size, mean=mean, std=(0.25, 0.25, 0.25))


def _data(n: int = 24, side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8), torch.arange(n) % 10


def _open(bank, images, targets, tmp_path, log=None, **kw):
    spec = CacheSpec(dir=str(tmp_path), views=4, topk=kw.pop("topk", 10), chunk=8, batch_size=32,
                     mode=kw.pop("mode", "exact"))
    temps = {s.name: T for s in bank.sources}
    return SoftLabelCache.open_or_build(bank, images, targets, spec, temps, padding=2, flip=True,
                                        progress=False, log=log or (lambda m: None), **kw)


def _key(src: Source, spec: CacheSpec = CacheSpec()) -> str:
    return cache_key("d", source_fingerprint(src, "fp32"), spec, T, 4, True)[0]


def test_key_changes_with_weights_input_size_normalisation_and_settings():
    base = _key(_source())
    assert base == _key(_source())  # deterministic
    assert base != _key(_source(seed=1))  # weights
    assert base != _key(_source(size=24))  # input size
    assert base != _key(_source(mean=(0.4, 0.5, 0.5)))  # normalisation
    assert base != _key(_source(), CacheSpec(seed=1))  # view seed
    assert base != _key(_source(), CacheSpec(topk=5))
    assert base != cache_key("other-dataset", source_fingerprint(_source(), "fp32"), CacheSpec(), T, 4, True)[0]
    assert base != cache_key("d", source_fingerprint(_source(), "bf16"), CacheSpec(), T, 4, True)[0]


def test_bad_options_and_uncacheable_sources_fail_in_one_line():
    with pytest.raises(SSKTError, match=r"unknown key\(s\) in cache: \['k'\]"):
        cache_spec({"mode": "exact", "k": 3})
    with pytest.raises(SSKTError, match="cache.mode"):
        cache_spec({"mode": "fuzzy"})
    src = _source()
    src.bn_mode = "train"
    with pytest.raises(SSKTError, match="can't be cached"):
        source_fingerprint(src, "fp32")


def test_cached_soft_labels_equal_live_sources_on_the_rebuilt_view(tmp_path):
    bank = SourceBank([_source("a", 10, 16), _source("b", 100, 12, seed=2)], "fp32")
    images, targets = _data()
    cache = _open(bank, images, targets, tmp_path)
    index = torch.tensor([0, 5, 23, 9, 5])
    view = cache.training_views(index, epoch=3)
    cached = cache.lookup(index, view)
    live = bank(to_float(apply_view(images[index], view, 2)))
    # a: all 10 classes kept -> equal up to fp16 storage; b: top-10 of 100 -> exact top-10 and tail mass.
    assert torch.allclose(cached["a"], live["a"], atol=1e-2, rtol=1e-3)
    kl = F.kl_div(F.log_softmax(cached["a"] / T, 1), F.log_softmax(live["a"] / T, 1), log_target=True,
                  reduction="batchmean")
    assert float(kl) < 1e-4, float(kl)
    # b: the top-10 probabilities and the tail's total mass are kept; only the tail's shape is flattened.
    p, q = F.softmax(live["b"] / T, 1), F.softmax(cached["b"] / T, 1)
    top = live["b"].topk(10, 1).indices
    assert torch.allclose(p.gather(1, top), q.gather(1, top), atol=2e-3)
    assert torch.allclose(1 - p.gather(1, top).sum(1), 1 - q.gather(1, top).sum(1), atol=2e-3)
    # A view that was never stored is refused rather than served a wrong label.
    with pytest.raises(SSKTError, match="not among the cached"):
        cache.lookup(index[:1], torch.tensor([[9, 9, 1]]))


def test_views_are_distinct_per_image_and_drawn_per_epoch(tmp_path):
    bank = SourceBank([_source()], "fp32")
    images, targets = _data()
    cache = _open(bank, images, targets, tmp_path)
    assert all(len({tuple(v) for v in cache.views[i].tolist()}) == 4 for i in range(len(images)))
    idx = torch.arange(len(images))
    assert not torch.equal(cache.training_views(idx, 0), cache.training_views(idx, 1))
    assert torch.equal(cache.training_views(idx, 1), cache.training_views(idx, 1))


def test_interrupted_build_resumes(tmp_path):
    bank = SourceBank([_source()], "fp32")
    images, targets = _data()  # 24 images, chunks of 8 -> 3 chunks

    def stop(chunk: int) -> None:
        if chunk == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _open(bank, images, targets, tmp_path, on_chunk=stop)
    messages: list[str] = []
    cache = _open(bank, images, targets, tmp_path, log=messages.append)
    assert any("resuming" in m and "1/3 chunks" in m for m in messages), messages
    assert cache.built_views == 16 * 4  # only the two missing chunks
    again = _open(bank, images, targets, tmp_path)
    assert again.built_views == 0
    idx = torch.arange(24)
    v = cache.training_views(idx, 0)
    assert torch.allclose(again.lookup(idx, v)["a"], bank(to_float(apply_view(images, v, 2)))["a"], atol=1e-2)


def test_concurrent_builds_wait_for_one_builder(tmp_path):
    """Two runs opening the same cache at once (DDP ranks, parallel seeds): one builds, the other says it
    waits, then reads the finished files without building anything."""
    import threading
    import time

    bank = SourceBank([_source()], "fp32")
    images, targets = _data()
    building, release = threading.Event(), threading.Event()
    results: dict[str, SoftLabelCache] = {}
    messages: list[str] = []

    def hold(chunk: int) -> None:  # the first builder pauses mid-build, holding the lock
        if chunk == 0:
            building.set()
            release.wait(30)

    def first() -> None:
        results["first"] = _open(bank, images, targets, tmp_path, on_chunk=hold)

    def second() -> None:
        building.wait(30)
        results["second"] = _open(SourceBank([_source()], "fp32"), images, targets, tmp_path, log=messages.append)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not any("waiting" in m for m in messages) and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()
    for t in threads:
        t.join(60)
    assert any("another process is building" in m for m in messages), messages
    assert results["first"].built_views == 24 * 4
    assert results["second"].built_views == 0  # nothing built twice
    idx = torch.arange(24)
    v = results["first"].training_views(idx, 0)
    assert torch.equal(results["first"].lookup(idx, v)["a"], results["second"].lookup(idx, v)["a"])


@pytest.mark.parametrize("damage", ["flip-record-byte", "truncate", "header"])
def test_damaged_file_is_reported_and_rebuilt(tmp_path, damage):
    bank = SourceBank([_source()], "fp32")
    images, targets = _data()
    cache = _open(bank, images, targets, tmp_path)
    f = cache.files["a"]
    path = f.path
    raw = bytearray(path.read_bytes())
    if damage == "flip-record-byte":
        raw[f.records_offset + 100] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) - 40]
    else:
        raw[30] ^= 0x01
    path.write_bytes(bytes(raw))
    messages: list[str] = []
    rebuilt = _open(bank, images, targets, tmp_path, log=messages.append)
    assert len(messages) == 1 and "damaged" in messages[0] and "rebuilding" in messages[0], messages
    assert rebuilt.built_views == 24 * 4
    idx = torch.arange(24)
    v = rebuilt.training_views(idx, 0)
    assert torch.allclose(rebuilt.lookup(idx, v)["a"], bank(to_float(apply_view(images, v, 2)))["a"], atol=1e-2)


def test_clean_mode_stores_the_unaugmented_output(tmp_path):
    bank = SourceBank([_source()], "fp32")
    images, targets = _data()
    cache = _open(bank, images, targets, tmp_path, mode="clean")
    idx = torch.tensor([1, 2])
    assert torch.allclose(cache.lookup(idx)["a"], bank(to_float(images[idx]))["a"], atol=1e-2)


def topk_kl(logits: Tensor, k: int, temperature: float) -> dict[str, float]:
    """Mean KL(full || approx) at ``temperature`` for ways to keep only the top-k logits: ``tail`` (this
    cache) and ``marginal`` (FKD: T = 1 probabilities with the tail mass spread uniformly, sharpened or
    softened to T afterwards); for ``renorm`` (top-k renormalised, tail 0) the probability mass it drops."""
    logits = logits.float()
    p = torch.softmax(logits / temperature, dim=1)
    log_p = p.clamp_min(1e-30).log()
    val, idx, tail = compress_logits(logits, k, temperature)
    approx = torch.log_softmax(expand_logits(val, idx, tail, logits.shape[1]) / temperature, dim=1)
    result = {"tail": float((p * (log_p - approx)).sum(1).mean())}
    # FKD stores softmax probabilities at T = 1; applying T afterwards means p^(1/T) renormalised.
    p1 = torch.softmax(logits, dim=1)
    top = p1.gather(1, idx)
    c = logits.shape[1]
    k = idx.shape[1]
    rest = ((1 - top.sum(1, keepdim=True)).clamp_min(0) / max(c - k, 1)).expand(-1, c).clone()
    q = rest.scatter(1, idx, top).clamp_min(1e-30) ** (1 / temperature)
    q = q / q.sum(1, keepdim=True)
    result["marginal"] = float((p * (log_p - q.log())).sum(1).mean())
    # renorm (top-k renormalised) puts zero mass on the tail, so KL(full || renorm) is infinite: report
    # the mass it drops instead.
    result["renorm_dropped_mass"] = float(1 - p.gather(1, idx).sum(1).mean())
    return result


def test_topk_tail_keeps_the_mass_at_the_temperature():
    logits = torch.randn(64, 1000) * 3
    val, idx, tail = compress_logits(logits, 10, T)
    rebuilt = expand_logits(val, idx, tail, 1000)
    p, q = F.softmax(logits / T, 1), F.softmax(rebuilt / T, 1)
    assert torch.allclose(p.gather(1, idx).sum(1), q.gather(1, idx).sum(1), atol=1e-5)
    kl = topk_kl(logits, 10, T)
    assert kl["tail"] <= kl["marginal"] + 1e-6


def test_sskt_with_exact_cache_never_runs_sources(tmp_path):
    images, targets = _data(32)
    data = ImageTensorDataset(images, targets)
    from sskt.config import DataConfig

    ctx = BuildContext(num_classes=10, input_shape=(3, 8, 8), multilabel=False, target=TargetConfig(),
                       train_data=data, data=DataConfig(crop_padding=2))
    opts = {"sources": [{"name": "s", "arch": "cifar_resnet20", "num_classes": 10, "input_size": 8}],
            "cache": {"mode": "exact", "views": 3, "dir": str(tmp_path), "chunk": 16}}
    method = SSKT.from_config(opts, ctx)
    assert method.cache is None  # building is cheap: the cache is prepare()'s
    assert method.prepare(ctx)[-1].startswith("total")
    for src in method.bank.sources:  # any source forward would now fail the test
        src.network.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("a source ran"))
    batch = data.__getitems__([0, 3, 31, 7])
    views = TrainingViews(padding=2, flip=True, seed=0, store=method.soft_label_store())  # what MethodModule does
    views.start_epoch(0)
    shown = views(batch)
    stored, slots = method.cache.stored_views(batch["index"], 0, 0)
    assert torch.equal(shown["view"], stored)  # the stored views, and their soft labels
    assert all(torch.equal(shown["soft_labels"][n], v) for n, v in method.cache.lookup(batch["index"], stored).items())
    out = method.training_step(shown)
    with pytest.raises(SSKTError, match="carries no soft labels"):  # the cache is never searched behind its back
        method.training_step({**batch, "image": shown["image"], "view": stored})
    assert set(out.losses) == {"target", "aux/s"} and torch.isfinite(sum(out.losses.values()))


def test_open_checks_stored_labels_against_live_sources(tmp_path, monkeypatch):
    import sskt.sources.cache as cache_mod

    bank = SourceBank([_source()], "fp32")
    images, targets = _data()
    _open(bank, images, targets, tmp_path)
    # Simulate a key that misses a change: same key, different weights -> refused, not used.
    monkeypatch.setattr(cache_mod, "source_fingerprint", lambda src, precision: {"constant": 1})
    _open(bank, images, targets, tmp_path / "b")
    with torch.no_grad():
        bank.sources[0].network.linear.weight.mul_(-3.0)
    with pytest.raises(SSKTError, match="disagrees with the live source"):
        _open(bank, images, targets, tmp_path / "b")
