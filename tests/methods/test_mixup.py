"""Function matching (``method.mixup``, Beyer et al. 2022): the auxiliary losses on mixup images that the
target and the live sources see alike; the target loss on the batch's own images; reproducible mixing."""
from __future__ import annotations

import pytest
import torch

from sskt.config import ExperimentConfig
from sskt.data.augment import batch_seed, mix_images
from sskt.engine.run import fit
from sskt.errors import SSKTError
from sskt.losses import kd_loss
from sskt.methods.sskt import SSKT, SSKTOptions
from sskt.models.factory import create_model
from sskt.models.target import TargetNetwork
from sskt.sources.source import Source
from testutils import CrashInEpoch, tiny_config


def test_mix_images_hand_computation_and_reproducibility() -> None:
    x = torch.rand(6, 3, 4, 4)
    mixed, lam, perm = mix_images(x, alpha=0.4, seed=7)
    assert sorted(perm.tolist()) == list(range(6)) and bool(((lam >= 0) & (lam <= 1)).all())
    for i in range(6):
        assert torch.allclose(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[perm[i]])
    again, lam2, perm2 = mix_images(x, alpha=0.4, seed=7)
    assert torch.equal(again, mixed) and torch.equal(lam, lam2) and torch.equal(perm, perm2)
    assert not torch.equal(mix_images(x, alpha=0.4, seed=8)[0], mixed)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mix_images(x, alpha=0.0, seed=0)


def test_batch_seed_follows_indices_and_views_not_the_global_generator() -> None:
    batch = {"image": torch.rand(4, 3, 8, 8), "index": torch.tensor([3, 1, 4, 0]),
             "view": torch.tensor([[1, 2, 0], [0, 0, 1], [3, 3, 0], [8, 1, 1]])}
    torch.manual_seed(0)
    a = batch_seed(batch)
    torch.manual_seed(123)
    assert batch_seed({**batch, "image": torch.rand(4, 3, 8, 8)}) == a  # pixels ignored when indices exist
    assert batch_seed({**batch, "index": torch.tensor([3, 1, 4, 2])}) != a
    assert batch_seed({**batch, "view": batch["view"].flip(0)}) != a  # another epoch's views: other mixes


class _Recording(torch.nn.Module):
    """Wraps a network and keeps the last batch it was given."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.seen = net, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return self.net(x)


def _method(mixup: float) -> SSKT:
    torch.manual_seed(0)
    target = TargetNetwork("cifar_resnet20", 10)
    recorder = _Recording(create_model("cifar_resnet20", 7))
    source = Source("s", recorder, 7, input_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    opts = SSKTOptions(sources=[{"name": "s"}], head="linear", alpha=1.0, mixup=mixup, source_precision="fp32")
    return SSKT(target, [source], opts, example=torch.rand(2, 3, 32, 32))


def test_sources_and_auxiliary_heads_see_the_mixed_images_and_the_target_loss_does_not() -> None:
    batch = {"image": torch.rand(8, 3, 32, 32), "target": torch.arange(8) % 10, "index": torch.arange(8),
             "view": torch.zeros(8, 3, dtype=torch.long)}
    plain, mixing = _method(0.0), _method(1.0)
    mixing.load_state_dict(plain.state_dict())
    plain.eval(); mixing.eval()  # BatchNorm on running statistics: the two passes are comparable
    out_plain, out_mix = plain.training_step(batch), mixing.training_step(batch)
    # The target loss is computed on the batch's own images, as without mixup.
    assert torch.allclose(out_plain.losses["target"], out_mix.losses["target"])
    mixed, _, _ = mix_images(batch["image"], 1.0, batch_seed(batch))
    seen = next(m for m in mixing.bank.modules() if isinstance(m, _Recording)).seen
    assert torch.allclose(seen, mixed, atol=1e-6) and not torch.allclose(seen, batch["image"])
    # The auxiliary loss: the head on the target's features of the mixed images vs the source on them.
    with torch.no_grad():
        feats = mixing.target.forward_features(mixed)
        expected = kd_loss(mixing.heads["s"](feats.pooled, feats.stages), mixing.bank(mixed)["s"], 3.0)
    assert torch.allclose(out_mix.losses["aux/s"], expected, atol=1e-5)
    assert not torch.allclose(out_plain.losses["aux/s"], out_mix.losses["aux/s"])
    again = mixing.training_step(batch)  # the same batch mixes the same way
    assert torch.equal(again.losses["aux/s"], out_mix.losses["aux/s"])


def test_mixup_options_are_checked_in_one_line() -> None:
    with pytest.raises(SSKTError, match="drop method.cache") as err:
        SSKTOptions(sources=[{"name": "s"}], mixup=1.0, cache={"mode": "exact"})
    assert "\n" not in str(err.value)
    with pytest.raises(SSKTError, match="mixup must be >= 0"):
        SSKTOptions(sources=[{"name": "s"}], mixup=-1.0)


def test_mixup_run_resumes_bit_identically(tmp_path) -> None:
    """Through the engine (live source, unlabelled images too): a crashed run, resumed, ends where the
    uninterrupted one did, because the mixing depends on the batch alone."""
    def cfg(sub: str) -> ExperimentConfig:
        raw = tiny_config(tmp_path / sub, data={"unlabeled": "rest", "unlabeled_count": 40},
                          method={"name": "sskt", "head": "linear", "alpha": 0.5, "mixup": 1.0,
                                  "sources": [{"name": "s", "arch": "cifar_resnet20", "num_classes": 10,
                                               "input_size": 8}]})
        raw["train"].update({"epochs": 3, "schedule": "multistep", "milestones": [1, 2], "gamma": 0.5})
        return ExperimentConfig.from_dict(raw)

    whole = fit(cfg("whole"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(cfg("resumed"), callbacks=[CrashInEpoch(1)])
    resumed = fit(cfg("resumed"))
    assert resumed.record["resumed_from"] is not None and resumed.final == whole.final
    a = torch.load(tmp_path / "whole" / "run" / "target.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "run" / "target.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
