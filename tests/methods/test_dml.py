"""DML: per-peer losses by hand, gradient isolation, sequential vs simultaneous, a short real run."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sskt.errors import SSKTError
from sskt.methods.dml import DML, DMLOptions, peer_loss
from sskt.models.target import TargetNetwork
from testutils import DIGITS_CHANCE, FakeModule


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_peer_loss_matches_hand_computation_for_three_peers() -> None:
    z = [torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[0.5, 0.5, 0.5]])]
    y = torch.tensor([1])
    p = [_softmax(t[0].tolist()) for t in z]

    def kl(q: list[float], r: list[float]) -> float:  # KL(q || r)
        return sum(a * math.log(a / b) for a, b in zip(q, r))

    ce, mean_kl = peer_loss(z, 0, y)
    assert ce.item() == pytest.approx(-math.log(p[0][1]), rel=1e-5)
    assert mean_kl.item() == pytest.approx((kl(p[1], p[0]) + kl(p[2], p[0])) / 2, rel=1e-5)


def _dml(update: str = "sequential") -> DML:
    torch.manual_seed(0)
    peers = [TargetNetwork("cifar_resnet20", 10), TargetNetwork("cifar_resnet20", 10)]
    return DML(peers, DMLOptions(update=update))


def test_each_peer_gets_gradients_from_its_own_loss_only() -> None:
    method = _dml()
    logits = method.peer_logits(torch.rand(4, 3, 32, 32))
    losses = method.peer_losses(logits, torch.tensor([0, 1, 2, 3]))
    for k, peer in enumerate(method.peers):
        method.zero_grad(set_to_none=True)
        (losses[k]["ce"] + losses[k]["kl"]).backward(retain_graph=True)
        assert all(p.grad is not None for p in peer.parameters())
        others = [q for j, q in enumerate(method.peers) if j != k]
        assert all(p.grad is None for q in others for p in q.parameters())


def _step(update: str, batch: dict) -> DML:
    from sskt.config import TrainConfig

    method = _dml(update)
    method.train()
    optimizers, _ = method.configure_optimizers(TrainConfig(lr=0.1))
    method.manual_step(batch, FakeModule(optimizers))
    return method


def test_sequential_update_uses_the_updated_first_peer() -> None:
    batch = {"image": torch.rand(8, 3, 32, 32), "target": torch.arange(8)}
    seq, sim = _step("sequential", batch), _step("simultaneous", batch)
    # Peer 0 sees the same inputs in both modes; peer 1 learns from peer 0's new prediction only in sequential.
    state_seq, state_sim = seq.target.state_dict(), sim.target.state_dict()
    assert all(torch.allclose(state_seq[k].float(), state_sim[k].float(), atol=1e-6) for k in state_seq)
    w_seq, w_sim = seq.others[0].model.linear.weight, sim.others[0].model.linear.weight
    assert not torch.allclose(w_seq, w_sim)


def test_peer_architectures_and_bad_update_flag() -> None:
    from sskt.config import TargetConfig
    from sskt.methods.base import BuildContext

    ctx = BuildContext(num_classes=10, input_shape=(3, 32, 32), multilabel=False, target=TargetConfig())
    method = DML.from_config({"peers": ["cifar_resnet32", "same"]}, ctx)
    assert [p.arch for p in method.peers] == ["cifar_resnet20", "cifar_resnet32", "cifar_resnet20"]
    with pytest.raises(SSKTError, match="update"):
        DMLOptions(update="both")


def test_short_digits_run_beats_chance_and_reports_every_peer(make_config, tmp_path: Path) -> None:
    from sskt.engine.run import fit

    # Mutual learning starts slower than scratch (each peer also fits the other's early guesses).
    result = fit(make_config(tmp_path, {"name": "dml", "update": "sequential"}, epochs=6, eval_every=6))
    assert result.final > DIGITS_CHANCE + 5
    accs = result.record["dml_peer_acc"]
    assert list(accs) == ["peer1_cifar_resnet20"] and accs["peer1_cifar_resnet20"] > DIGITS_CHANCE
    assert "peer0" in result.record["dml_reported_peer"]
