"""Losses: focal loss behaviour, class weighting and the config dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.losses import FocalLoss, balanced_class_weights, build_loss


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 5, generator=generator) * 3
    target = torch.randint(0, 5, (32,), generator=generator)
    return logits, target


@pytest.mark.parametrize("weight", [None, torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0])])
def test_focal_with_gamma_zero_equals_cross_entropy(batch, weight):
    logits, target = batch
    focal = FocalLoss(gamma=0.0, weight=weight)(logits, target)
    ce = torch.nn.CrossEntropyLoss(weight=weight)(logits, target)
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


def test_focal_down_weights_easy_examples():
    target = torch.tensor([0, 0])
    easy = torch.tensor([[4.0, 0.0, 0.0]])  # p_t ~ 0.96
    hard = torch.tensor([[0.0, 2.0, 0.0]])  # p_t ~ 0.11
    focal, ce = FocalLoss(gamma=2.0), torch.nn.CrossEntropyLoss()
    easy_ratio = focal(easy, target[:1]) / ce(easy, target[:1])
    hard_ratio = focal(hard, target[:1]) / ce(hard, target[:1])
    assert easy_ratio < 0.01
    assert hard_ratio > 0.7
    assert focal(easy, target[:1]) < focal(hard, target[:1])


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_is_finite_for_extreme_logits(gamma):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    target = torch.tensor([0, 0])  # one certain and right, one certain and wrong
    loss = FocalLoss(gamma=gamma)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_focal_accepts_low_precision_logits(batch):
    logits, target = batch
    loss = FocalLoss(gamma=2.0)(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(FocalLoss(gamma=2.0)(logits, target).item(), rel=2e-2)


def test_balanced_weights_match_scikit_learn():
    counts = np.array([10, 30, 60])
    y = np.repeat(np.arange(3), counts)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(balanced_class_weights(counts), expected)
    np.testing.assert_allclose(balanced_class_weights(counts), [100 / 30, 100 / 90, 100 / 180])


def test_balanced_weights_with_an_empty_class():
    weights = balanced_class_weights(np.array([10, 0, 30]))
    assert np.isfinite(weights).all()
    assert weights[1] == 0
    np.testing.assert_allclose(weights[[0, 2]], [40 / 20, 40 / 60])


@pytest.mark.parametrize("loss", ["ce", "focal", "label_smoothing"])
def test_balanced_weights_are_applied_to_every_loss(batch, loss):
    logits, target = batch
    counts = np.array([1, 2, 3, 4, 90])
    weighted = build_loss(TrainConfig(loss=loss, class_weights="balanced"), counts)
    plain = build_loss(TrainConfig(loss=loss), counts)
    np.testing.assert_allclose(weighted.weight.numpy(), balanced_class_weights(counts), rtol=1e-6)
    assert plain.weight is None
    assert weighted(logits, target).item() != pytest.approx(plain(logits, target).item())


def test_build_loss_types_and_parameters(batch):
    logits, target = batch
    counts = np.ones(5)
    ce = build_loss(TrainConfig(loss="ce"), counts)
    focal = build_loss(TrainConfig(loss="focal", focal_gamma=1.5), counts)
    smooth = build_loss(TrainConfig(loss="label_smoothing", label_smoothing=0.2), counts)
    assert type(ce) is torch.nn.CrossEntropyLoss and ce.label_smoothing == 0.0
    assert isinstance(focal, FocalLoss) and focal.gamma == 1.5
    assert smooth.label_smoothing == pytest.approx(0.2)
    assert smooth(logits, target).item() != pytest.approx(ce(logits, target).item())


@pytest.mark.parametrize("loss", ["ce", "focal", "label_smoothing"])
def test_gradients_are_finite(batch, loss):
    logits, target = batch
    logits = (logits * 100).requires_grad_()
    criterion = build_loss(
        TrainConfig(loss=loss, class_weights="balanced"), np.array([0, 5, 5, 5, 5])
    )
    criterion(logits, torch.where(target == 0, 1, target)).backward()
    assert torch.isfinite(logits.grad).all()


def test_weight_follows_the_module_to_a_device():
    # The meta device stands in for a GPU on CPU-only machines: .to() moves buffers, not attributes.
    focal = FocalLoss(weight=torch.ones(3))
    assert "weight" in dict(focal.named_buffers())
    assert focal.to("meta").weight.device == torch.device("meta")


def test_negative_gamma_is_rejected():
    with pytest.raises(ConfigError):
        FocalLoss(gamma=-1.0)
