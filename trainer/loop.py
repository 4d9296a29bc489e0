"""`fit`: one `TrainConfig` and one fold split in, one trained fold model and its metrics out.

The loop only trains, evaluates and calls hooks. Pruning, tracking and progress live in hooks:
`trainer.types.FitHook` objects told before the fold, after every epoch (where any of them may
return a reason to stop the fold) and after the fold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from trainer import metrics
from trainer.augment import train_transform
from trainer.cache import CachedImages
from trainer.config import TrainConfig
from trainer.device import (
    EVAL_BATCH_SIZE,
    Runtime,
    eval_batch_size,
    resolve_runtime,
    seed_everything,
)
from trainer.errors import ConfigError
from trainer.features import FoldFeatures, fold_features, linear_head
from trainer.loader import EpochBatches, TrainLoader, eval_batches, stats_tensors, to_model_input
from trainer.losses import build_loss
from trainer.models import build_model, normalization, trainable_parameters
from trainer.optim import build_optimizer, build_schedule
from trainer.probe import HeadRound, fit_linear_head, head_probs, load_head
from trainer.types import Diverged, EpochMetrics, FitHook, FoldResult, Split


@dataclass
class _Fold:
    """The mutable objects of a fold being trained."""

    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object
    scaler: torch.amp.GradScaler | None
    mean: torch.Tensor
    std: torch.Tensor


def fit(
    config: TrainConfig,
    data: CachedImages,
    split: Split,
    hooks: Sequence[FitHook] = (),
    *,
    cached_features: bool = True,
) -> FoldResult:
    """Train one fold and return the weights and predictions of its best epoch.

    With ``finetune="head"`` the backbone's features are computed once (`trainer.features`)
    and a linear head is fitted to convergence on them (`trainer.probe`): each history row is
    then a round of L-BFGS, and the result is the last, converged one. With
    ``finetune="probe_full"`` that head is the starting point of full fine-tuning.

    Args:
        config: Everything that decides how the model is trained.
        data: Cached images and labels of the whole dataset.
        split: Which indices to train and validate on.
        hooks: Told before the fold, after every epoch (any reason returned stops the fold)
            and after the fold, in this order.
        cached_features: Store features beside the image cache and fit ``head`` on them.
            False trains ``head`` epoch by epoch through the frozen backbone (the slower path,
            kept for comparison) and computes ``probe_full``'s features without storing them.

    Raises:
        Diverged: If the training loss or the validation probabilities are not finite.
    """
    for hook in hooks:
        hook.before_fold(split)
    started = time.perf_counter()
    runtime = resolve_runtime(config)
    seed_everything(config.seed * 1000 + split.fold)
    fold = _prepare(config, data, split, runtime)
    if config.finetune == "head" and cached_features and linear_head(fold.model) is not None:
        history, best, stop_reason = _fit_converged_head(config, data, split, runtime, fold, hooks)
    else:
        if config.finetune == "probe_full":
            _start_from_probe(config, data, split, runtime, fold, store=cached_features)
        history, best, stop_reason = _train_epochs(config, data, split, runtime, fold, hooks)
    score, best_epoch, state, probs = best
    seconds = time.perf_counter() - started
    result = FoldResult(
        split.fold, score, best_epoch, tuple(history), split.val, probs, state, seconds, stop_reason
    )
    for hook in hooks:
        hook.after_fold(result)
    return result


_Best = tuple[float, int, dict[str, torch.Tensor], np.ndarray]


def _train_epochs(
    config: TrainConfig,
    data: CachedImages,
    split: Split,
    runtime: Runtime,
    fold: _Fold,
    hooks: Sequence[FitHook],
) -> tuple[list[EpochMetrics], _Best, str | None]:
    """Train epoch by epoch; the best epoch's score, index, weights and probabilities."""
    loader = _train_loader(config, data, split, runtime)
    history: list[EpochMetrics] = []
    best: _Best | None = None
    stop_reason = None
    for epoch in range(config.epochs):
        tick = time.perf_counter()
        train_loss = _train_epoch(fold, loader.epoch(epoch), runtime, config, epoch)
        probs = predict_probs(
            fold.model,
            data.images,
            split.val,
            runtime,
            fold.mean,
            fold.std,
            batch_size=eval_batch_size(config.image_size, runtime.device, config.eval_batch_size),
        )
        _check_finite(probs, epoch)
        row = _measure(config, split, data, epoch, train_loss, probs, fold.schedule.lr, tick)
        fold.schedule.after_epoch(row.val_loss)
        history.append(row)
        if best is None or metrics.is_better(config.metric, row.score, best[0]):
            best = (row.score, epoch, _cpu_copy(fold.model), probs)
        stop_reason = _hooks_say_stop(hooks, row) or _patience_says_stop(config, epoch, best[1])
        if stop_reason:
            break
    return history, best, stop_reason


def _fit_converged_head(
    config: TrainConfig,
    data: CachedImages,
    split: Split,
    runtime: Runtime,
    fold: _Fold,
    hooks: Sequence[FitHook],
) -> tuple[list[EpochMetrics], _Best, str | None]:
    """Fit the linear head on cached features; one history row per round of L-BFGS.

    The result is the last round (converged, or stopped by a hook), never an earlier one that
    happened to score better: a converged head depends only on the settings that define its
    objective, not on how many steps reached it.
    """
    features = _features(config, data, runtime, fold, store=True)
    val = torch.from_numpy(features.plain[split.val]).to(runtime.device)
    history: list[EpochMetrics] = []
    tick, stop_reason = time.perf_counter(), None
    for index, head in enumerate(_probe_rounds(config, data, split, features, fold, runtime)):
        probs = head_probs(head, val)
        _check_finite(probs, index)
        row = _measure(config, split, data, index, head.train_loss, probs, 0.0, tick)
        history.append(row)
        stop_reason = _hooks_say_stop(hooks, row)
        tick = time.perf_counter()
        if stop_reason:
            break
    load_head(fold.model, head)
    return history, (row.score, index, _cpu_copy(fold.model), probs), stop_reason


def _start_from_probe(
    config: TrainConfig,
    data: CachedImages,
    split: Split,
    runtime: Runtime,
    fold: _Fold,
    *,
    store: bool,
) -> None:
    """Replace the random classifier by the converged linear probe (LP-FT's first stage)."""
    if linear_head(fold.model) is None:
        raise ConfigError(
            f"finetune='probe_full' needs a backbone whose classifier is one linear layer, and "
            f"{config.backbone!r} has none; use finetune='full' for it."
        )
    features = _features(config, data, runtime, fold, store=store)
    *_, head = _probe_rounds(config, data, split, features, fold, runtime)
    load_head(fold.model, head)


def _features(
    config: TrainConfig, data: CachedImages, runtime: Runtime, fold: _Fold, *, store: bool
) -> FoldFeatures:
    batch = eval_batch_size(config.image_size, runtime.device, config.eval_batch_size)
    stats = (fold.mean, fold.std)
    return fold_features(fold.model, config, data, runtime, stats, batch_size=batch, store=store)


def _probe_rounds(
    config: TrainConfig,
    data: CachedImages,
    split: Split,
    features: FoldFeatures,
    fold: _Fold,
    runtime: Runtime,
) -> Iterator[HeadRound]:
    """The rounds of fitting the head on every view of the training images."""
    views = features.training(split.train)  # (V, n, D): every view is a training row
    x = torch.from_numpy(views.reshape(-1, views.shape[-1])).to(runtime.device)
    y = torch.from_numpy(np.tile(data.labels[split.train], len(views))).to(runtime.device)
    return fit_linear_head(
        x, y, fold.criterion, num_classes=len(data.classes), weight_decay=config.probe_l2
    )


def _prepare(config: TrainConfig, data: CachedImages, split: Split, runtime: Runtime) -> _Fold:
    num_classes = len(data.classes)
    model = build_model(config, num_classes)
    mean, std = stats_tensors(*normalization(model), runtime.device)
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    counts = np.bincount(data.labels[split.train], minlength=num_classes)
    criterion = build_loss(config, counts).to(runtime.device)
    optimizer = build_optimizer(config, trainable_parameters(model))
    batches = max(1, len(split.train) // config.batch_size)
    schedule = build_schedule(config, optimizer, math.ceil(batches / config.grad_accum))
    fp16 = runtime.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler(runtime.device.type) if fp16 else None
    return _Fold(model, criterion, optimizer, schedule, scaler, mean, std)


def _train_loader(
    config: TrainConfig, data: CachedImages, split: Split, runtime: Runtime
) -> TrainLoader:
    transform = train_transform(
        config.augment, config.image_size, hflip=config.hflip, seed=config.seed
    )
    batches = EpochBatches(
        data.images,
        data.labels,
        split.train,
        batch_size=config.batch_size,
        transform=transform,
        seed=config.seed * 1000 + split.fold,
    )
    pin = runtime.device.type == "cuda"
    return TrainLoader(batches, num_workers=runtime.num_workers, pin_memory=pin)


def _autocast(runtime: Runtime):
    if runtime.amp_dtype is None:
        return nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.amp_dtype)


def _train_epoch(
    fold: _Fold,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    config: TrainConfig,
    epoch: int,
) -> float:
    fold.model.train()
    total, count = torch.zeros((), device=runtime.device), 0
    fold.optimizer.zero_grad(set_to_none=True)
    pending = 0
    for pixels, labels in batches:
        x = to_model_input(
            pixels,
            device=runtime.device,
            mean=fold.mean,
            std=fold.std,
            memory_format=runtime.memory_format,
        )
        y = labels.to(runtime.device, non_blocking=True)
        with _autocast(runtime):
            loss = fold.criterion(fold.model(x), y)
        _backward(fold, loss / config.grad_accum)
        total += loss.detach() * len(y)
        count, pending = count + len(y), pending + 1
        if pending == config.grad_accum:
            _step(fold, config, pending)
            pending = 0
    if pending:
        _step(fold, config, pending)
    mean_loss = total.item() / max(count, 1)
    if not math.isfinite(mean_loss):
        raise Diverged(f"training loss became {mean_loss} in epoch {epoch + 1}")
    return mean_loss


def _backward(fold: _Fold, loss: torch.Tensor) -> None:
    if fold.scaler is None:
        loss.backward()
    else:
        fold.scaler.scale(loss).backward()


def _step(fold: _Fold, config: TrainConfig, batches: int) -> None:
    if fold.scaler is not None:
        fold.scaler.unscale_(fold.optimizer)
    if batches != config.grad_accum:
        _average_over(fold.model, batches, config.grad_accum)
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(fold.model.parameters(), config.grad_clip)
    if fold.scaler is None:
        fold.optimizer.step()
    else:
        fold.scaler.step(fold.optimizer)
        fold.scaler.update()
    fold.optimizer.zero_grad(set_to_none=True)
    fold.schedule.after_step()


def _average_over(model: torch.nn.Module, batches: int, grad_accum: int) -> None:
    """Turn gradients summed as ``loss / grad_accum`` into the mean over ``batches`` batches."""
    # Each batch's loss is divided by grad_accum before the group's size is known; the last
    # group of an epoch can be shorter, and without this its step would be too small.
    for parameter in model.parameters():
        if parameter.grad is not None:
            parameter.grad.mul_(grad_accum / batches)


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    images: np.ndarray,
    indices: np.ndarray,
    runtime: Runtime,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
) -> np.ndarray:
    """Softmax probabilities (float32, rows in ``indices`` order) of un-augmented images."""
    model.eval()
    outputs = []
    for pixels in eval_batches(images, indices, batch_size=batch_size):
        x = to_model_input(
            pixels,
            device=runtime.device,
            mean=mean,
            std=std,
            memory_format=runtime.memory_format,
        )
        with _autocast(runtime):
            logits = model(x)
        outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(outputs).numpy()


def _check_finite(probs: np.ndarray, epoch: int) -> None:
    # A model can train with a finite loss and still predict NaN in eval mode (running BatchNorm
    # statistics, fp16 overflow); that is divergence too, and is reported as training's is.
    if not np.isfinite(probs).all():
        raise Diverged(f"validation probabilities became NaN in epoch {epoch + 1}")


def _measure(
    config: TrainConfig,
    split: Split,
    data: CachedImages,
    epoch: int,
    train_loss: float,
    probs: np.ndarray,
    lr: float,
    tick: float,
) -> EpochMetrics:
    y_true = data.labels[split.val]
    y_pred = probs.argmax(axis=1)
    return EpochMetrics(
        fold=split.fold,
        epoch=epoch,
        train_loss=train_loss,
        val_loss=metrics.log_loss(y_true, probs),
        accuracy=metrics.accuracy(y_true, y_pred),
        f1_macro=metrics.f1_macro(y_true, y_pred),
        lr=lr,
        score=metrics.score(config.metric, y_true, probs),
        seconds=time.perf_counter() - tick,
    )


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _hooks_say_stop(hooks: Sequence[FitHook], row: EpochMetrics) -> str | None:
    # Every hook sees every epoch (tracking must log the epoch that triggers a stop).
    reasons = [hook.after_epoch(row) for hook in hooks]
    return next((reason for reason in reasons if reason), None)


def _patience_says_stop(config: TrainConfig, epoch: int, best_epoch: int) -> str | None:
    if config.patience is not None and epoch - best_epoch >= config.patience:
        return f"early stopping: no improvement for {config.patience} epochs"
    return None
