"""Classification losses: cross-entropy, focal and label smoothing, optionally class-weighted."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.errors import ConfigError

# Keeps the focal modulating factor's gradient finite when a prediction is certain and
# gamma < 1 (d/dp (1 - p)**gamma is infinite at p = 1).
_MIN_MODULATION_BASE = 1e-12


class FocalLoss(torch.nn.Module):
    """Focal loss (Lin et al., 2017): cross-entropy scaled by ``(1 - p_t) ** gamma``.

    Easy examples (high ``p_t``) contribute less, so training focuses on hard ones. With
    ``gamma=0`` it equals `torch.nn.CrossEntropyLoss` with the same ``weight``, including
    the weighted mean (divided by the sum of the target weights).

    Args:
        gamma: Focusing parameter, at least 0.
        weight: Optional per-class weights (alpha), shape ``(num_classes,)``.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal_gamma={gamma!r} must not be negative.")
        self.gamma = float(gamma)
        self.register_buffer("weight", None if weight is None else weight.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean focal loss of ``logits`` (N, C) against integer ``target`` (N,)."""
        # float32 and log_softmax keep the loss stable under mixed precision and large logits.
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
        base = (-torch.expm1(log_p)).clamp_min(_MIN_MODULATION_BASE)  # 1 - p_t, accurately
        losses = -(base**self.gamma) * log_p
        if self.weight is None:
            return losses.mean()
        sample_weight = self.weight[target]
        return (losses * sample_weight).sum() / sample_weight.sum()

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"gamma={self.gamma}, weighted={self.weight is not None}"


def balanced_class_weights(class_counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights ``n_samples / (n_classes * count)``, as scikit-learn computes.

    ``n_classes`` counts only classes with samples, so the sample-weighted mean weight is 1. A
    class with no samples gets weight 0 instead of infinity; it can never be a target.

    Args:
        class_counts: Samples per class, shape ``(num_classes,)``.

    Returns:
        float64 weights of the same shape.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ConfigError("class_weights='balanced' needs at least one class with samples.")
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def build_loss(config: TrainConfig, class_counts: np.ndarray) -> torch.nn.Module:
    """The training loss named by ``config.loss``, class-weighted if ``config.class_weights``.

    Args:
        config: Uses ``loss``, ``focal_gamma``, ``label_smoothing`` and ``class_weights``.
        class_counts: Samples per class in the training fold, shape ``(num_classes,)``.

    Returns:
        A module called as ``loss(logits, target)``; move it to the device with the model.
    """
    weight = None
    if config.class_weights == "balanced":
        weight = torch.from_numpy(balanced_class_weights(class_counts)).float()
    if config.loss == "ce":
        return torch.nn.CrossEntropyLoss(weight=weight)
    if config.loss == "focal":
        return FocalLoss(gamma=config.focal_gamma, weight=weight)
    if config.loss == "label_smoothing":
        return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    raise ConfigError(f"loss={config.loss!r} is not one of 'ce', 'focal', 'label_smoothing'.")
