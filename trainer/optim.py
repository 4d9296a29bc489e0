"""Optimizers and learning-rate schedules, behind one small API the training loop calls."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR

from trainer.config import TrainConfig
from trainer.errors import ConfigError

# Epochs without a val-loss improvement before ``plateau`` decays the learning rate.
PLATEAU_PATIENCE = 1


def build_optimizer(
    config: TrainConfig, params: Iterable[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over ``params``.

    Weight decay applies only to weight matrices and kernels; biases and normalisation
    parameters (every 1-D tensor) are not decayed, because shrinking them only hurts.

    Args:
        config: Uses ``optimizer``, ``lr``, ``weight_decay``, ``momentum`` and ``nesterov``.
        params: The parameters to train (for example `trainer.models.trainable_parameters`).

    Returns:
        The optimizer; its first param group holds the decayed parameters when there are any.
    """
    params = list(params)
    groups = _param_groups(params, config.weight_decay)
    fused = _can_fuse(params)
    if config.optimizer == "sgd":
        # torch rejects nesterov without momentum; momentum=0 simply means plain SGD.
        nesterov = config.nesterov and config.momentum > 0
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=nesterov, fused=fused
        )
    if config.optimizer == "adam":  # Adam's weight_decay is an L2 penalty
        return torch.optim.Adam(groups, lr=config.lr, fused=fused)
    if config.optimizer == "adamw":  # decoupled weight decay
        return torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    raise ConfigError(f"optimizer={config.optimizer!r} is not one of 'adamw', 'adam', 'sgd'.")


def _can_fuse(params: list[torch.nn.Parameter]) -> bool | None:
    """Whether torch's fused optimizer step applies: floating-point parameters on CPU or CUDA.

    The fused step updates every parameter in one kernel instead of a Python loop over them:
    on the CPU, an AdamW step over test_resnet's 47 tensors takes 0.9 ms instead of 4.9 ms,
    a tenth of its 40-50 ms training step. Elsewhere (MPS, other dtypes) torch's default stays.
    """
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if params and fusable else None


def _param_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Split ``params`` into a decayed group (ndim > 1) and an undecayed one (ndim <= 1)."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


class LrSchedule:
    """One learning-rate schedule that the loop drives the same way whatever its kind.

    Call `after_step` after every optimizer step and `after_epoch` after every validation;
    each schedule acts on the call that matches its unit and ignores the other.

    Args:
        optimizer: The optimizer whose learning rates are scheduled.
        per_step: A scheduler stepped after each optimizer step, or None.
        per_epoch: A scheduler stepped after each epoch, or None.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        per_step: LambdaLR | None = None,
        per_epoch: StepLR | ReduceLROnPlateau | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.per_step = per_step
        self.per_epoch = per_epoch

    def after_step(self) -> None:
        """Advance a per-step schedule (cosine with warmup) by one optimizer step."""
        if self.per_step is not None:
            self.per_step.step()

    def after_epoch(self, val_loss: float) -> None:
        """Advance a per-epoch schedule; ``plateau`` decays when ``val_loss`` stops improving."""
        if isinstance(self.per_epoch, ReduceLROnPlateau):
            self.per_epoch.step(val_loss)
        elif self.per_epoch is not None:
            self.per_epoch.step()

    @property
    def lr(self) -> float:
        """The current learning rate of the first param group."""
        return float(self.optimizer.param_groups[0]["lr"])


def build_schedule(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> LrSchedule:
    """The schedule named by ``config.scheduler`` for ``optimizer``.

    Args:
        config: Uses ``scheduler``, ``epochs``, ``warmup_epochs``, ``step_size`` and
            ``step_gamma``.
        optimizer: Built by `build_optimizer`, with the peak learning rate.
        steps_per_epoch: Optimizer steps per epoch (batches divided by gradient accumulation).

    Returns:
        An `LrSchedule`; the optimizer already holds the first step's learning rate.
    """
    if config.scheduler == "cosine":
        total = config.epochs * max(1, steps_per_epoch)
        warmup = min(total, round(config.warmup_epochs * max(1, steps_per_epoch)))
        factor = functools.partial(warmup_cosine, warmup_steps=warmup, total_steps=total)
        return LrSchedule(optimizer, per_step=LambdaLR(optimizer, factor))
    if config.scheduler == "step":
        step = StepLR(optimizer, step_size=config.step_size, gamma=config.step_gamma)
        return LrSchedule(optimizer, per_epoch=step)
    if config.scheduler == "plateau":
        return LrSchedule(optimizer, per_epoch=_plateau(config, optimizer))
    if config.scheduler == "none":
        return LrSchedule(optimizer)
    raise ConfigError(
        f"scheduler={config.scheduler!r} is not one of 'cosine', 'step', 'plateau', 'none'."
    )


def _plateau(config: TrainConfig, optimizer: torch.optim.Optimizer) -> ReduceLROnPlateau | None:
    """ReduceLROnPlateau on val loss; None for ``step_gamma == 1`` (torch rejects factor 1)."""
    if config.step_gamma >= 1.0:
        return None
    return ReduceLROnPlateau(
        optimizer, mode="min", factor=config.step_gamma, patience=PLATEAU_PATIENCE
    )


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor for optimizer step ``step`` (0-based): linear warmup, then cosine.

    Warmup rises linearly to 1 at step ``warmup_steps - 1`` (the first step already trains);
    the cosine then falls from 1 towards 0 at ``total_steps`` and stays at 0 after it.

    Args:
        step: Optimizer steps taken so far.
        warmup_steps: Length of the warmup, 0 for none.
        total_steps: Steps in the whole run.

    Returns:
        The multiplier of the peak learning rate, in [0, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
