"""One trial: sample parameters, train every fold, report and prune, return the mean score."""

from __future__ import annotations

import inspect
import math
import statistics
import time
import traceback

import optuna
import torch

from search import keys
from search.engine.rungs import RungReporter
from search.hooks import Hooks
from search.keys import DIVERGED, EPOCHS, FOLD_SCORES, PRUNED_AT, PRUNED_REASON, SCORE_STD, SECONDS
from search.space.spacefile import Space
from search.study.data import StudyData
from search.study.pruning import Rungs
from trainer.cache import CachedImages
from trainer.config import TrainConfig
from trainer.device import eval_batch_size, pick_device, release_memory
from trainer.loop import fit, predict_probs
from trainer.types import Diverged, EpochMetrics, FitHook, FoldResult, Split


class _EpochPruning(FitHook):
    """A `fit` hook: tells the reporter each epoch and stops the fold when it says so.

    One instance serves every attempt at its fold. Optuna keeps the first value reported at a
    step and ignores (with a warning) any later one, and the pruner has already judged those
    epochs, so a fold retried after running out of memory reports only the epochs after the
    last one an earlier attempt reported: the trial's curve is the first attempt's up to there,
    then the retry's, each step reported once.
    """

    def __init__(
        self, trial: optuna.Trial, fold: int, hooks: Hooks, reporter: RungReporter
    ) -> None:
        self.trial, self.fold, self.hooks, self.reporter = trial, fold, hooks, reporter
        self.reason: str | None = None
        self.diverged: str | None = None
        self.reported = -1  # the last epoch told to the reporter

    def after_epoch(self, row: EpochMetrics) -> str | None:
        self.hooks.epoch_ended(self.trial, row)
        if not math.isfinite(row.score):
            self.diverged = f"the validation score became {row.score} in epoch {row.epoch + 1}"
            return "diverged"
        if row.epoch <= self.reported:
            return None
        self.reported = row.epoch
        self.reason = self.reporter.after_epoch(self.fold, row.epoch, row.score)
        return "pruned" if self.reason else None


class Objective:
    """Trains a trial's config on every fold of the study's fixed splits.

    Args:
        space: The validated space that parameters are sampled from.
        data: The study's cached images and splits.
        hooks: Hooks told about every trial, fold and epoch.
    """

    def __init__(self, space: Space, data: StudyData, hooks: Hooks) -> None:
        self.space, self.data, self.hooks = space, data, hooks

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the trial; raises `optuna.TrialPruned` with the reason when it is pruned."""
        config = self.space.config(self.space.sample(trial))
        trial.set_user_attr(keys.CONFIG_ATTR, config.to_dict())
        trial.set_user_attr(keys.TRIAL_SPLITS_ID_ATTR, self.data.splits_id)
        self.hooks.trial_started(trial, config)
        return self.cross_validate(trial, config)

    def cross_validate(self, trial: optuna.Trial, config: TrainConfig) -> float:
        """Train every fold in order; the trial's value is the mean of the fold scores."""
        images = self.data.images(config.image_size)
        settings = self.space.settings
        reporter = RungReporter(
            trial, Rungs.of(settings), epochs=config.epochs, p=settings.pruner_p
        )
        scores: list[float] = []
        started, epochs = time.perf_counter(), 0
        for split in self.data.splits:
            pruning = _EpochPruning(trial, split.fold, self.hooks, reporter)
            try:
                result, config = _fit_within_memory(trial, config, images, split, pruning)
            except Diverged as err:
                _record(trial, scores, epochs, started)
                _diverged(trial, f"fold {split.fold}: {err}", split.fold)
            self.hooks.fold_ended(trial, result)
            epochs += result.epochs_run
            if pruning.diverged:
                _record(trial, scores, epochs, started)
                _diverged(trial, f"fold {split.fold}: {pruning.diverged}", split.fold)
            if pruning.reason:
                _record(trial, scores, epochs, started)
                _prune(trial, pruning.reason, reporter.pruned_at)
            scores.append(result.score)
            _record(trial, scores, epochs, started)  # before the fold rule reads the scores
            reason = reporter.after_fold(split.fold, scores)
            if reason:
                _prune(trial, reason, reporter.pruned_at)
        return statistics.fmean(scores)


def _fit_within_memory(
    trial: optuna.Trial,
    config: TrainConfig,
    images: CachedImages,
    split: Split,
    pruning: _EpochPruning,
) -> tuple[FoldResult, TrainConfig]:
    """`fit`, retried with a smaller batch where it ran out of memory.

    Out of memory in training halves the batch and doubles the accumulation: the effective
    batch (batch_size x grad_accum) stays the same, so the trial still tests the
    hyperparameters it sampled. Out of memory in evaluation halves the evaluation batch only.
    The smaller batch is kept for the trial's remaining folds.

    Raises:
        torch.OutOfMemoryError: When the batch that ran out of memory is already 1.
    """
    while True:
        try:
            return fit(config, images, split, [pruning]), config
        except torch.OutOfMemoryError as err:
            smaller = _smaller_batch(config, in_evaluation=_raised_in_evaluation(err))
            if smaller is None:
                raise
        # Only now, outside the handler, is the exception's traceback gone, and with it the
        # frames that kept the failed attempt's model, optimizer state and activations alive.
        release_memory()
        config = smaller
        retry = {"fold": split.fold, "batch_size": config.batch_size}
        retry |= {"grad_accum": config.grad_accum, "eval_batch_size": config.eval_batch_size}
        trial.set_user_attr(keys.OUT_OF_MEMORY_RETRY_ATTR, retry)
        trial.set_user_attr(keys.CONFIG_ATTR, config.to_dict())


def _raised_in_evaluation(err: BaseException) -> bool:
    """Whether ``err`` was raised while `predict_probs` ran (evaluation, not training)."""
    evaluation = inspect.unwrap(predict_probs).__code__
    return any(frame.f_code is evaluation for frame, _ in traceback.walk_tb(err.__traceback__))


def _smaller_batch(config: TrainConfig, *, in_evaluation: bool) -> TrainConfig | None:
    """``config`` with the batch that ran out of memory halved; None when it is already 1."""
    if in_evaluation:
        device = pick_device(config.device)
        current = eval_batch_size(config.image_size, device, config.eval_batch_size)
        return config.replace(eval_batch_size=current // 2) if current > 1 else None
    if config.batch_size < 2:
        return None
    return config.replace(batch_size=config.batch_size // 2, grad_accum=config.grad_accum * 2)


def _record(trial: optuna.Trial, scores: list[float], epochs: int, started: float) -> None:
    trial.set_user_attr(FOLD_SCORES, list(scores))
    trial.set_user_attr(SCORE_STD, statistics.pstdev(scores) if len(scores) > 1 else 0.0)
    trial.set_user_attr(EPOCHS, epochs)
    trial.set_user_attr(SECONDS, round(time.perf_counter() - started, 3))


def _prune(trial: optuna.Trial, reason: str, where: dict | None) -> None:
    trial.set_user_attr(PRUNED_REASON, reason)
    trial.set_user_attr(PRUNED_AT, where)
    raise optuna.TrialPruned(reason)


def _diverged(trial: optuna.Trial, reason: str, fold: int) -> None:
    """Prune a trial whose loss or score turned NaN; the sampler sees it as the worst trial."""
    trial.set_user_attr(DIVERGED, True)
    _prune(trial, f"diverged: {reason}", {"fold": fold, "epoch": None, "rung": None})
