"""Optimizers (param groups, flags) and the learning-rate curves of every schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from trainer.config import TrainConfig
from trainer.optim import build_optimizer, build_schedule, warmup_cosine


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )


def _optimizer(**changes) -> torch.optim.Optimizer:
    return build_optimizer(TrainConfig(lr=0.1, **changes), _model().parameters())


def _step_lrs(schedule, steps: int) -> list[float]:
    """The learning rate used by each of ``steps`` optimizer steps."""
    lrs = []
    for _ in range(steps):
        lrs.append(schedule.lr)
        schedule.optimizer.step()
        schedule.after_step()
    return lrs


def _epoch_lrs(schedule, val_losses: list[float], steps_per_epoch: int = 3) -> list[float]:
    """The learning rate of each epoch, driving the schedule the way the loop does."""
    lrs = []
    for val_loss in val_losses:
        lrs.append(schedule.lr)
        for _ in range(steps_per_epoch):
            schedule.optimizer.step()
            schedule.after_step()
            assert schedule.lr == lrs[-1]  # epoch schedules never move within an epoch
        schedule.after_epoch(val_loss)
    return lrs


def test_biases_and_norm_parameters_are_not_decayed():
    model = _model()
    optimizer = build_optimizer(TrainConfig(weight_decay=0.05), model.parameters())
    decayed, undecayed = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and undecayed["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim == 1 for p in undecayed["params"])
    assert len(decayed["params"]) + len(undecayed["params"]) == len(list(model.parameters()))


def test_only_undecayed_parameters_give_one_group():
    optimizer = build_optimizer(TrainConfig(), [torch.nn.Parameter(torch.zeros(3))])
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_optimizer_kind_and_lr(name, cls):
    optimizer = _optimizer(optimizer=name)
    assert type(optimizer) is cls
    assert all(group["lr"] == 0.1 for group in optimizer.param_groups)


def test_sgd_momentum_and_nesterov():
    group = _optimizer(optimizer="sgd", momentum=0.8, nesterov=True).param_groups[0]
    assert group["momentum"] == 0.8 and group["nesterov"] is True
    assert _optimizer(optimizer="sgd", nesterov=False).param_groups[0]["nesterov"] is False
    plain = _optimizer(optimizer="sgd", momentum=0.0, nesterov=True).param_groups[0]
    assert plain["nesterov"] is False  # torch would reject nesterov without momentum


def test_cosine_warmup_rises_linearly_then_decays_to_zero():
    config = TrainConfig(lr=0.1, scheduler="cosine", warmup_epochs=2, epochs=10)
    schedule = build_schedule(config, _optimizer(), steps_per_epoch=10)
    lrs = _step_lrs(schedule, 100)
    warmup = lrs[:20]
    assert warmup[0] == pytest.approx(0.1 / 20)
    assert all(b - a == pytest.approx(0.1 / 20) for a, b in itertools.pairwise(warmup))
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) in (19, 20)
    decay = lrs[20:]
    assert all(b < a for a, b in itertools.pairwise(decay))
    assert lrs[60] == pytest.approx(0.05, rel=0.05)  # half-way through the cosine
    assert lrs[-1] < 0.001


def test_cosine_with_fractional_and_no_warmup():
    half = build_schedule(TrainConfig(warmup_epochs=0.5, epochs=2), _optimizer(), 10)
    assert _step_lrs(half, 6) == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])
    none = build_schedule(TrainConfig(warmup_epochs=0, epochs=2), _optimizer(), 10)
    assert none.lr == pytest.approx(0.1)


def test_cosine_ignores_epoch_calls():
    schedule = build_schedule(TrainConfig(scheduler="cosine"), _optimizer(), 10)
    before = schedule.lr
    schedule.after_epoch(1.0)
    assert schedule.lr == before


def test_warmup_cosine_factor():
    assert warmup_cosine(0, warmup_steps=0, total_steps=10) == 1.0
    assert warmup_cosine(5, warmup_steps=0, total_steps=10) == pytest.approx(0.5)
    assert warmup_cosine(50, warmup_steps=0, total_steps=10) == 0.0
    assert warmup_cosine(3, warmup_steps=4, total_steps=10) == 1.0
    assert math.isclose(warmup_cosine(7, warmup_steps=4, total_steps=10), 0.5)
    assert math.isclose(warmup_cosine(8, warmup_steps=4, total_steps=10), 0.25)


def test_step_decays_at_the_right_epochs():
    config = TrainConfig(scheduler="step", step_size=3, step_gamma=0.1)
    lrs = _epoch_lrs(build_schedule(config, _optimizer(), 3), [1.0] * 7)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])


def test_plateau_reduces_after_no_improvement():
    config = TrainConfig(scheduler="plateau", step_gamma=0.5)
    lrs = _epoch_lrs(build_schedule(config, _optimizer(), 3), [1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05])
    assert _epoch_lrs(build_schedule(config, _optimizer(), 3), [1.0, 0.9, 0.8, 0.7]) == (
        pytest.approx([0.1] * 4)
    )


def test_plateau_with_gamma_one_is_constant():
    config = TrainConfig(scheduler="plateau", step_gamma=1.0)
    lrs = _epoch_lrs(build_schedule(config, _optimizer(), 3), [1.0] * 5)
    assert lrs == pytest.approx([0.1] * 5)


def test_none_is_constant():
    schedule = build_schedule(TrainConfig(scheduler="none"), _optimizer(), 4)
    assert _epoch_lrs(schedule, [1.0, 2.0, 3.0], steps_per_epoch=4) == pytest.approx([0.1] * 3)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_cpu_parameters_get_the_fused_step_with_the_same_update(name):
    torch.manual_seed(0)
    model = _model()
    fused = build_optimizer(TrainConfig(lr=0.1, optimizer=name), model.parameters())
    assert all(group["fused"] for group in fused.param_groups)
    twin = [p.detach().clone().requires_grad_() for p in model.parameters()]
    looped = build_optimizer(TrainConfig(lr=0.1, optimizer=name), twin)
    for group in looped.param_groups:  # torch's own loop over the parameters, for reference
        group["fused"] = None
    for optimizer, params in ((fused, list(model.parameters())), (looped, twin)):
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.5 * (step + 1))
            optimizer.step()
    for a, b in zip(model.parameters(), twin, strict=True):
        torch.testing.assert_close(a, b)


def test_integer_parameters_keep_torchs_default_step():
    optimizer = build_optimizer(TrainConfig(), [torch.nn.Parameter(torch.zeros(3))])
    assert optimizer.param_groups[0]["fused"]
    frozen = torch.nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
    assert build_optimizer(TrainConfig(), [frozen]).param_groups[0]["fused"] is None
