"""MAXL: mask softmax, focal and entropy terms by hand, the meta-gradient, a short real run."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sskt.config import TrainConfig
from sskt.errors import SSKTError
from sskt.methods.maxl import (MAXL, MAXLOptions, batch_entropy_regulariser, hierarchy_mask, mask_softmax,
                               soft_focal_loss)
from sskt.models.target import TargetNetwork
from testutils import DIGITS_CHANCE, FakeModule


def test_mask_softmax_matches_the_reference_formula() -> None:
    psi = [2, 3]
    mask = hierarchy_mask(psi)
    assert mask.shape == (2, 5)
    assert mask[0].tolist()[:2] == [1.0, 1.0] and mask[0, 2].item() == pytest.approx(1e-8)
    x = torch.tensor([[0.3, -1.0, 2.0, 0.0, 1.0], [0.3, -1.0, 2.0, 0.0, 1.0]])
    y = torch.tensor([0, 1])
    got = mask_softmax(x, y, mask)
    for i in range(2):
        num = [math.exp(v) * m for v, m in zip(x[i].tolist(), mask[y[i]].tolist())]
        assert got[i].tolist() == pytest.approx([n / sum(num) for n in num], rel=1e-5)
    # Large logits do not overflow.
    assert torch.isfinite(mask_softmax(x * 1000, y, mask)).all()


def test_focal_and_entropy_terms_match_hand_computation() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.2, 0.8, 0.0]])
    e = [math.exp(v) for v in logits[0].tolist()]
    p = [v / sum(e) for v in e]
    expected = -sum(ti * (1 - pi) ** 2 * math.log(pi) for ti, pi in zip(t[0].tolist(), p))
    assert soft_focal_loss(logits, t, 2.0).item() == pytest.approx(expected, rel=1e-5)
    labels = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.9, 0.0]])
    mean = [0.3, 0.7, 0.0]
    assert batch_entropy_regulariser(labels).item() == pytest.approx(
        sum(m * math.log(m + 1e-20) for m in mean), rel=1e-5)


def _maxl(psi: int = 2) -> MAXL:
    torch.manual_seed(0)
    return MAXL(TargetNetwork("cifar_resnet20", 3), TargetNetwork("cifar_resnet20", 3 * psi), MAXLOptions(psi=psi),
                example=torch.rand(2, 3, 16, 16))


def test_generator_gets_a_nonzero_meta_gradient_and_only_through_the_look_ahead() -> None:
    method = _maxl()
    method.train()
    images, y = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    meta, entropy = method.meta_loss(images, y, inner_lr=0.1)
    gen = list(method.generator.parameters())
    grads = torch.autograd.grad(meta, gen, allow_unused=True, retain_graph=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # Without the virtual step (inner lr 0) the primary loss does not depend on the generator at all.
    meta0, _ = method.meta_loss(images, y, inner_lr=0.0)
    grads0 = torch.autograd.grad(meta0, gen, allow_unused=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in grads0)
    # The generator's own labels feed the entropy term directly.
    assert any(g is not None and float(g.abs().sum()) > 0 for g in torch.autograd.grad(entropy, gen, allow_unused=True))


def test_manual_step_updates_both_networks_and_leaves_no_stale_gradients() -> None:
    method = _maxl()
    method.train()
    opts, _ = method.configure_optimizers(TrainConfig(lr=0.1))
    before_t = [p.detach().clone() for p in method.multitask_parameters()]
    before_g = [p.detach().clone() for p in method.generator.parameters()]
    bn = method.target.model.bn1
    out = method.manual_step({"image": torch.rand(6, 3, 16, 16), "target": torch.tensor([0, 1, 2, 0, 1, 2])},
                             FakeModule(opts))
    assert set(out.losses) == {"target", "aux", "meta/primary", "meta/entropy"}
    assert any(not torch.equal(a, b) for a, b in zip(before_t, method.multitask_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, method.generator.parameters()))
    # The look-ahead ran on copies of the buffers: only two real forwards counted in BatchNorm.
    assert bn.num_batches_tracked.item() == 2  # the multi-task step and the meta step's real forward


def test_psi_must_fit_the_classes() -> None:
    with pytest.raises(SSKTError, match="psi"):
        MAXLOptions(psi=[2, 2]).psi_list(3)


def test_short_digits_run_beats_chance(make_config, tmp_path: Path) -> None:
    from sskt.engine.run import fit

    result = fit(make_config(tmp_path, {"name": "maxl", "psi": 2}, epochs=2, eval_every=2))  # ~5x a scratch step
    assert result.final > DIGITS_CHANCE + 5
