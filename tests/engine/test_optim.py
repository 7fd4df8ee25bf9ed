"""Parameter groups without weight decay on norms/biases; warmup + multistep/cosine LR; EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detmine.engine.optim import ModelEMA, WarmupScheduler, build_optimizer, lr_factor, param_groups


def net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False), nn.GroupNorm(2, 4)
    )


def test_param_groups_exclude_norms_and_biases():
    model = net()
    model[2].weight.requires_grad_(False)  # frozen: left out
    decay, no_decay = param_groups(model, weight_decay=1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight)}
    expected = {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[3].weight),
        id(model[3].bias),
    }
    assert {id(p) for p in no_decay["params"]} == expected
    (everything,) = param_groups(model, weight_decay=1e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == 6


def test_build_optimizer_kinds():
    sgd = build_optimizer(net(), name="sgd", lr=0.1, weight_decay=1e-4, momentum=0.8, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adamw = build_optimizer(net(), name="adamw", lr=1e-3, weight_decay=0.05, betas=[0.9, 0.99])
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.99)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]


def test_warmup_then_multistep():
    kw = dict(
        max_iters=100, schedule="multistep", steps=[50, 80], gamma=0.1, warmup_iters=10, warmup_factor=0.001
    )
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    assert lr_factor(5, **kw) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, **kw) == 1.0 and lr_factor(49, **kw) == 1.0
    assert lr_factor(50, **kw) == pytest.approx(0.1) and lr_factor(80, **kw) == pytest.approx(0.01)


def test_warmup_then_cosine_and_scheduler_per_iteration():
    kw = dict(max_iters=100, schedule="cosine", min_lr_ratio=0.1, warmup_iters=4, warmup_factor=0.25)
    assert lr_factor(50, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, **kw) == pytest.approx(0.1)
    assert lr_factor(2, **kw) == pytest.approx(
        (0.25 * 0.5 + 0.5) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.02)))
    )
    opt = torch.optim.SGD(net().parameters(), lr=0.2)
    sched = WarmupScheduler(opt, **kw)
    lrs = []
    for _ in range(60):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2 * 0.25) and lrs[50 - 1] == pytest.approx(0.2 * lr_factor(49, **kw))
    restored = WarmupScheduler(torch.optim.SGD(net().parameters(), lr=0.2), **kw)
    restored.load_state_dict(sched.state_dict())
    assert restored.get_last_lr() == sched.get_last_lr()


def test_ema_average_and_warmup():
    model = nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9, tau=0)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, start + 0.1)
    ramped = ModelEMA(model, decay=0.9, tau=10)
    ramped.updates = 9
    assert ramped.current_decay() == pytest.approx(0.9 * (1 - math.exp(-0.9)))
