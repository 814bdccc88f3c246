"""Sources stay frozen: no gradient, bit-identical parameters and BN statistics, eval mode."""
import copy

import torch

from sskt.engine.lit import MethodModule
from sskt.config import TrainConfig
from sskt.methods.sskt import SSKT, SSKTOptions
from sskt.models import TargetNetwork
from sskt.models.factory import create_model
from sskt.sources import Source, SourceBank


def _sskt(bn_mode="eval", head="transfer"):
    torch.manual_seed(0)
    sources = [Source("a", create_model("cifar_resnet20", 1000), 1000, input_size=40, bn_mode=bn_mode),
               Source("b", create_model("cifar_resnet32", 365), 365, input_scale=7 / 3, bn_mode=bn_mode)]
    opts = SSKTOptions(sources=[{"name": "a"}, {"name": "b"}], head=head)
    return SSKT(TargetNetwork("cifar_resnet20", 10), sources, opts, example=torch.rand(2, 3, 32, 32))


def _step(method):
    module = MethodModule(method, TrainConfig(epochs=1), num_classes=10)
    opt = module.configure_optimizers()["optimizer"]
    method.train()
    batch = {"image": torch.rand(8, 3, 32, 32), "target": torch.randint(0, 10, (8,))}
    out = method.training_step(batch)
    loss = sum(out.losses.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return out


def test_sources_frozen_through_a_training_step():
    method = _sskt()
    before = copy.deepcopy(method.bank.state_dict())
    target_before = copy.deepcopy(method.target.state_dict())
    out = _step(method)
    assert set(out.losses) == {"target", "aux/a", "aux/b"}
    for src in method.bank.sources:
        assert not src.training and all(not m.training for m in src.modules())
        assert all(p.grad is None and not p.requires_grad for p in src.parameters())
    after = method.bank.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert any(not torch.equal(target_before[k], v) for k, v in method.target.state_dict().items())
    # the optimiser only holds target and head parameters
    module = MethodModule(method, TrainConfig(epochs=1), num_classes=10)
    opt_params = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in method.bank.parameters()}
    assert {id(p) for p in method.heads.parameters()} <= opt_params


def test_legacy_train_bn_mode_drifts_running_stats():
    method = _sskt(bn_mode="train")
    before = copy.deepcopy(method.bank.state_dict())
    _step(method)
    after = method.bank.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)


def test_source_input_size_rule():
    src = Source("s", create_model("cifar_resnet20", 10), 10, input_scale=7 / 3)
    assert src.output_size(32) == 74 and src.output_size(96) == 224  # the reference's 7/3 upsampling
    assert src.prepare(torch.rand(1, 3, 32, 32)).shape[-1] == 74


def test_bank_matches_separate_source_forwards():
    torch.manual_seed(0)
    srcs = [Source("a", create_model("cifar_resnet20", 10), 10, input_size=40),
            Source("b", create_model("cifar_resnet20", 5), 5, input_size=40, mean=(0.5,) * 3, std=(0.25,) * 3)]
    bank = SourceBank(srcs)
    x = torch.rand(4, 3, 32, 32)
    out = bank(x)
    with torch.no_grad():
        for s in srcs:
            assert torch.allclose(out[s.name], s(x), atol=1e-5)
    assert out["a"].requires_grad is False
