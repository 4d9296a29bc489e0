"""`fit`: it learns, keeps the best epoch, calls its hooks, stops, repeats, and accumulates."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from trainer import loop
from trainer.cache import cached_images
from trainer.config import TrainConfig
from trainer.device import Runtime, pick_device, resolve_runtime
from trainer.errors import ConfigError
from trainer.loader import EpochBatches, TrainLoader, stats_tensors
from trainer.loop import fit, predict_probs
from trainer.models import build_model, normalization
from trainer.optim import build_schedule
from trainer.sources import load_table
from trainer.types import Diverged, FitHook, Split


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    table = load_table("builtin:digits")
    return cached_images(table, 32, directory=tmp_path_factory.mktemp("cache"), progress=False)


def split_of(n: int, *, train: int, val: int, seed: int = 0) -> Split:
    order = np.random.default_rng(seed).permutation(n)
    return Split(0, order[:train], order[train : train + val])


def test_learns_digits_to_at_least_90_percent(digits):
    config = TrainConfig(backbone="test_resnet", epochs=3, lr=3e-3, hflip=False)
    result = fit(config, digits, split_of(len(digits), train=1400, val=397))
    assert result.history[-1].accuracy >= 0.90
    assert result.score == max(row.score for row in result.history)
    assert result.history[result.best_epoch].score == result.score


def test_result_holds_best_epoch_weights_and_out_of_fold_probabilities(digits):
    split = split_of(len(digits), train=512, val=128)
    config = TrainConfig(backbone="test_vit", epochs=2, augment="none")
    result = fit(config, digits, split)
    assert result.val_probs.shape == (128, 10)
    np.testing.assert_allclose(result.val_probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(result.val_indices, split.val)
    model = build_model(config, 10)
    model.load_state_dict(result.state_dict)
    runtime = resolve_runtime(config)
    mean, std = stats_tensors(*normalization(model), runtime.device)
    again = predict_probs(model, digits.images, split.val, runtime, mean, std)
    np.testing.assert_allclose(again, result.val_probs, atol=1e-5)
    assert set(result.history[0].scalars()) == {
        "train_loss",
        "val_loss",
        "accuracy",
        "f1_macro",
        "lr",
        "score",
        "seconds",
    }


def test_hooks_see_the_fold_and_every_epoch_and_can_stop_the_fold(digits):
    class StopAfterSecond(FitHook):
        def __init__(self):
            self.calls = []

        def after_epoch(self, row):
            self.calls.append(("epoch", row.epoch))
            return "enough" if row.epoch == 1 else None

    class Watch(FitHook):
        def __init__(self):
            self.calls = []

        def before_fold(self, split):
            self.calls.append(("before", split.fold))

        def after_epoch(self, row):
            self.calls.append(("epoch", row.fold, row.epoch))

        def after_fold(self, result):
            self.calls.append(("after", result.stop_reason, result.epochs_run))

    stopper, watch = StopAfterSecond(), Watch()
    config = TrainConfig(backbone="test_vit", epochs=5, augment="none")
    result = fit(config, digits, split_of(len(digits), train=256, val=64), [stopper, watch])
    assert stopper.calls == [("epoch", 0), ("epoch", 1)]
    assert watch.calls == [("before", 0), ("epoch", 0, 0), ("epoch", 0, 1), ("after", "enough", 2)]
    assert result.stop_reason == "enough" and result.epochs_run == 2


def test_patience_stops_a_fold_that_no_longer_improves(digits):
    config = TrainConfig(backbone="test_vit", epochs=6, lr=1e-9, patience=2, scheduler="none")
    result = fit(config, digits, split_of(len(digits), train=256, val=64))
    assert result.epochs_run < 6
    assert result.stop_reason.startswith("early stopping")


def test_same_seed_repeats_exactly_on_the_cpu(digits):
    config = TrainConfig(backbone="test_resnet", epochs=2, augment="medium", hflip=False)
    split = split_of(len(digits), train=256, val=64)
    first, second = fit(config, digits, split), fit(config, digits, split)
    assert [r.train_loss for r in first.history] == [r.train_loss for r in second.history]
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    other = fit(config.replace(seed=1), digits, split)
    assert other.history[0].train_loss != first.history[0].train_loss


def test_gradient_accumulation_matches_one_big_batch(digits):
    # test_vit has no batch norm, so two half batches give the same gradient as one batch.
    base = TrainConfig(
        backbone="test_vit", epochs=1, augment="none", scheduler="none", optimizer="sgd"
    )
    split = split_of(len(digits), train=256, val=64)
    big = fit(base.replace(batch_size=64), digits, split)
    accumulated = fit(base.replace(batch_size=32, grad_accum=2), digits, split)
    for key, value in big.state_dict.items():
        torch.testing.assert_close(accumulated.state_dict[key], value, atol=2e-5, rtol=1e-4)


def test_a_last_partial_accumulation_group_is_averaged_over_its_own_batches():
    # 3 batches with grad_accum=2: one step on the mean of batches 0 and 1, then one on batch 2
    # alone, which must count fully (not be halved as if a second batch were missing).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 3, 3))
    start = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randint(0, 256, (4, 4, 4, 3), dtype=torch.uint8, generator=generator),
            torch.randint(0, 3, (4,), generator=generator),
        )
        for _ in range(3)
    ]
    config = TrainConfig(grad_accum=2, scheduler="none", device="cpu", num_workers=0)
    runtime = Runtime(torch.device("cpu"), None, False, 0)
    mean, std = stats_tensors((0.5,) * 3, (0.25,) * 3, runtime.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    criterion = torch.nn.CrossEntropyLoss()
    fold = loop._Fold(
        model, criterion, optimizer, build_schedule(config, optimizer, 2), None, mean, std
    )
    loop._train_epoch(fold, batches, runtime, config, 0)

    expected = [p.clone().requires_grad_() for p in start]

    def group_loss(group):
        losses = []
        for pixels, labels in group:
            x = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
            logits = x.flatten(1) @ expected[0].T + expected[1]
            losses.append(criterion(logits, labels))
        return sum(losses) / len(losses)

    for group in (batches[:2], batches[2:]):
        grads = torch.autograd.grad(group_loss(group), expected)
        with torch.no_grad():
            for value, grad in zip(expected, grads, strict=True):
                value -= 0.5 * grad
    for trained, value in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(trained.detach(), value.detach(), atol=1e-6, rtol=1e-5)


def _fit_watching_norms(monkeypatch, config, data, split):
    """`fit`, and the global gradient norm its optimizer saw at each step (after clipping)."""
    norms: list[float] = []
    real_build = loop.build_optimizer

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        norms.append(torch.nn.utils.get_total_norm([g for g in grads if g is not None]).item())

    def build_and_watch(config, params):
        optimizer = real_build(config, params)
        optimizer.register_step_pre_hook(record)
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", build_and_watch)
    try:
        return fit(config, data, split), norms
    finally:
        monkeypatch.setattr(loop, "build_optimizer", real_build)


def test_gradient_clipping_bounds_the_norm_and_step_schedule_decays(digits, monkeypatch):
    split = split_of(len(digits), train=256, val=64)
    config = TrainConfig(backbone="test_vit", epochs=2, scheduler="step", step_size=1, lr=1e-3)
    _, unclipped = _fit_watching_norms(monkeypatch, config, digits, split)
    result, clipped = _fit_watching_norms(monkeypatch, config.replace(grad_clip=0.5), digits, split)
    assert len(clipped) == len(unclipped) == 8
    assert min(unclipped) > 0.5  # so clipping had something to do at every step
    assert clipped == pytest.approx([0.5] * 8, rel=1e-4)
    assert result.history[1].lr == pytest.approx(1e-4)


def test_non_finite_loss_raises_diverged(digits, monkeypatch):
    class NanLoss(torch.nn.Module):
        def forward(self, logits, labels):
            return logits.sum() * float("nan")

    monkeypatch.setattr(loop, "build_loss", lambda config, counts: NanLoss())
    config = TrainConfig(backbone="test_vit", epochs=2)
    with pytest.raises(Diverged, match="epoch 1"):
        fit(config, digits, split_of(len(digits), train=128, val=64))


def test_non_finite_validation_probabilities_raise_diverged(digits, monkeypatch):
    # Training stays finite; only evaluation (eval mode) produces NaN, as a broken BatchNorm
    # running statistic does. It must prune the trial like a NaN training loss, not fail it.
    def nan_when_evaluating(config, num_classes):
        model = build_model(config, num_classes)
        model.register_forward_hook(lambda m, args, out: out if m.training else out * math.nan)
        return model

    monkeypatch.setattr(loop, "build_model", nan_when_evaluating)
    config = TrainConfig(backbone="test_vit", epochs=2, metric="log_loss")
    with pytest.raises(Diverged, match="validation probabilities became NaN in epoch 1"):
        fit(config, digits, split_of(len(digits), train=128, val=64))


def test_batches_do_not_depend_on_worker_count(digits):
    from trainer.augment import train_transform

    def epoch_batches(workers):
        transform = train_transform("heavy", 32, seed=0)
        batches = EpochBatches(
            digits.images, digits.labels, np.arange(200), batch_size=50, transform=transform, seed=3
        )
        loader = TrainLoader(batches, num_workers=workers, pin_memory=False)
        return [x.clone() for x, _ in loader.epoch(1)]

    inline, worker = epoch_batches(0), epoch_batches(1)
    assert len(inline) == 4
    assert all(torch.equal(a, b) for a, b in zip(inline, worker, strict=True))


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_device_is_picked_automatically(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device() == torch.device(expected)


def test_a_requested_device_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        pick_device("cuda")
    with pytest.raises(ConfigError, match="not a device name"):
        pick_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cuda:1") == torch.device("cuda", 1)


def test_trainer_imports_neither_optuna_nor_mlflow():
    code = (
        "import sys, trainer.loop, trainer.cache, trainer.summary, trainer.sources\n"
        "bad = [m for m in ('optuna', 'mlflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_worker_forked_after_opencv_used_its_threads_does_not_hang():
    # OpenCV's thread pool, once used and idle, deadlocks a forked child that resizes it.
    script = (
        "import numpy as np\n"
        "from trainer.augment import train_transform\n"
        "from trainer.loader import EpochBatches, TrainLoader\n"
        "import cv2, time\n"
        "cv2.warpAffine(np.zeros((256, 256, 3), np.uint8), np.eye(2, 3, dtype=np.float32),"
        " (256, 256))\n"
        "time.sleep(0.3)\n"
        "images = np.zeros((64, 32, 32, 3), np.uint8)\n"
        "batches = EpochBatches(images, np.zeros(64, np.int64), np.arange(64), batch_size=16,"
        " transform=train_transform('light', 32), seed=0)\n"
        "print(len(list(TrainLoader(batches, num_workers=1, pin_memory=False).epoch(0))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "4", done.stderr[-2000:]
