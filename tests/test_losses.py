"""Loss functions against hand computations."""
import math

import pytest
import torch

from sskt.losses import SOFT_LOSSES, focal_loss, kd_legacy_loss, kd_loss, soft_cross_entropy

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
T_ = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _hand_kl(s, t, temp):
    total = 0.0
    for sr, tr in zip(s.tolist(), t.tolist()):
        p, q = _softmax(tr, temp), _softmax(sr, temp)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return temp**2 * total / len(s)


@pytest.mark.parametrize("temp", [1.0, 3.0])
def test_kd_is_t2_times_batch_mean_kl(temp):
    assert kd_loss(S, T_, temp).item() == pytest.approx(_hand_kl(S, T_, temp), rel=1e-5)


def test_kd_legacy_divides_by_number_of_source_classes():
    assert kd_legacy_loss(S, T_, 3.0).item() == pytest.approx(_hand_kl(S, T_, 3.0) / 3, rel=1e-5)


def test_soft_ce_hand_computation_and_relation_to_kd():
    temp = 3.0
    hand = 0.0
    for sr, tr in zip(S.tolist(), T_.tolist()):
        p, q = _softmax(tr, temp), _softmax(sr, temp)
        hand += -sum(pi * math.log(qi) for pi, qi in zip(p, q))
    hand = temp**2 * hand / len(S)
    assert soft_cross_entropy(S, T_, temp).item() == pytest.approx(hand, rel=1e-5)
    entropy = sum(-sum(pi * math.log(pi) for pi in _softmax(r, temp)) for r in T_.tolist()) / len(T_)
    assert soft_cross_entropy(S, T_, temp).item() == pytest.approx(kd_loss(S, T_, temp).item() + temp**2 * entropy,
                                                                   rel=1e-5)


def test_kd_zero_when_student_equals_teacher_but_soft_ce_is_not():
    z = torch.randn(5, 7)
    assert kd_loss(z, z, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_cross_entropy(z, z, 3.0).item() > 0.1


def test_focal_hand_computation_and_gamma_zero_is_ce():
    logits, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0])
    p = _softmax([2.0, 0.0, -1.0], 1.0)[0]
    assert focal_loss(logits, y, gamma=2.0).item() == pytest.approx(-(1 - p) ** 2 * math.log(p), rel=1e-5)
    assert focal_loss(logits, y, gamma=0.0).item() == pytest.approx(-math.log(p), rel=1e-5)


def test_registry_names():
    assert {"kd", "kd-legacy", "soft-ce"} <= set(SOFT_LOSSES.names())


@pytest.mark.parametrize("name", ["bce", "focal-bce"])
def test_multilabel_losses_leave_ignored_entries_out(name):
    """VOC 'difficult'-only classes are neither positive nor negative: no loss, no gradient."""
    from sskt.losses import TARGET_LOSSES

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ignore = torch.tensor([[False, True, False], [False, False, True]])
    loss = TARGET_LOSSES.get(name)(logits, target, ignore)

    def entry(z: float, y: float) -> float:  # hand BCE (and focal weight) of one entry
        p = 1 / (1 + math.exp(-z))
        p_t = p if y else 1 - p
        return -math.log(p_t) * ((1 - p_t) ** 2 if name == "focal-bce" else 1.0)

    kept = [(2.0, 1), (0.5, 0), (0.0, 0), (3.0, 1)]
    assert loss.item() == pytest.approx(sum(entry(z, y) for z, y in kept) / len(kept), rel=1e-5)
    loss.backward()
    assert logits.grad[ignore].abs().max() == 0
    assert (logits.grad[~ignore] != 0).all()
    no_mask = TARGET_LOSSES.get(name)(logits.detach(), target)  # without a mask: the plain mean
    assert no_mask.item() == pytest.approx(sum(entry(z, y) for z, y in zip(logits.flatten().tolist(),
                                                                            target.flatten().tolist())) / 6, rel=1e-5)


def test_scratch_training_step_uses_the_batch_ignore_mask():
    from sskt.methods.scratch import Scratch, ScratchOptions
    from sskt.models.target import TargetNetwork

    torch.manual_seed(0)
    m = Scratch(TargetNetwork("cifar_resnet20", 3), ScratchOptions(), multilabel=True)
    batch = {"image": torch.rand(2, 3, 16, 16), "target": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])}
    out = m.training_step(batch)
    everything, logits = out.losses["target"], out.logits
    ignore = torch.tensor([[False, False, False], [False, False, True]])
    masked = m.training_step({**batch, "ignore": ignore}).losses["target"]
    per_entry = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["target"], reduction="none")
    assert masked.item() == pytest.approx(per_entry[~ignore].mean().item(), rel=1e-5)
    assert everything.item() == pytest.approx(per_entry.mean().item(), rel=1e-5)


def test_feature_regression_hand_computation():
    from sskt.losses import feature_regression

    predicted = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    embedding = torch.tensor([[0.0, 2.0, 1.0], [2.0, 1.0, 3.0]])
    # squared errors 1, 0, 1 and 4, 4, 0: 10 over 6 entries
    assert float(feature_regression(predicted, embedding)) == pytest.approx(10 / 6)
    assert float(feature_regression(embedding, embedding)) == 0.0
