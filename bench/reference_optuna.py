"""The study a practitioner writes by hand from common Optuna + PyTorch tutorials.

This is the yardstick `end_to_end.py` holds hpo against, so it is deliberately ordinary, not
deliberately slow: torchvision's ``ImageFolder`` opens and resizes every image with PIL every
epoch, a plain train/validate loop runs over ``StratifiedKFold`` folds, Optuna's
``MedianPruner`` sees the per-epoch scores of fold 0 only, and results go to print() and a CSV.
The search space, trial budget, data and settings come from an hpo space file (sampled with
``space.sample(trial)``, so both tools search the same distributions); the training is not hpo's.

    .venv/bin/python bench/reference_optuna.py spaces/baseline.py --trials 20 [key=value ...]

Data: a folder of class subfolders, or ``builtin:digits``, which is first saved as PNG files
(what a practitioner with a folder has), then read from them every epoch like any folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import csv
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

from bench import common
from search.space.spacefile import Space, load_space
from trainer.config import TrainConfig

# TrainConfig fields this loop honours; any other field that differs from its default is listed
# when the study starts, so a reader knows what the tutorial loop leaves out.
HONOURED = (
    "backbone",
    "image_size",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "momentum",
    "nesterov",
    "loss",
    "focal_gamma",
    "label_smoothing",
    "dropout",
    "drop_path",
    "augment",
    "hflip",
    "metric",
    "seed",
)
_IGNORED_ALWAYS = ("device", "amp", "channels_last", "num_workers", "threads")


@dataclass(frozen=True)
class ReferenceResult:
    """The outcome of a reference study."""

    best_value: float
    best_std: float
    best_params: dict[str, Any]
    seconds: float
    complete: int
    pruned: int
    epochs: int


# --- data --------------------------------------------------------------------------------------


def image_folder(data: str, workdir: Path) -> Path:
    """The folder to read: ``data`` itself, or the digits written once as PNG files."""
    if data == "builtin:digits":
        return export_digits(workdir / "digits-png")
    path = Path(data)
    if not path.is_dir():
        sys.exit(f"reference_optuna: data={data} must be a folder of class subfolders.")
    return path


def export_digits(folder: Path) -> Path:
    """Save scikit-learn's digits (as hpo sees them: RGB uint8) as ``folder/<label>/*.png``."""
    from trainer.sources import load_table

    table = load_table("builtin:digits")
    done = folder / ".complete"
    if done.exists():
        return folder
    for i, (pixels, label) in enumerate(zip(table.arrays, table.labels, strict=True)):
        target = folder / table.classes[label] / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target)
    done.touch()
    return folder


def tutorial_transform(
    size: int,
    *,
    augment: str,
    hflip: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    train: bool,
) -> T.Compose:
    """Resize, the augmentation policy's torchvision look-alike, ToTensor, Normalize."""
    steps: list[Any] = [T.Resize((size, size))]
    if train and augment != "none":
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        steps += _augment_steps(augment, size)
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def _augment_steps(augment: str, size: int) -> list[Any]:
    if augment == "light":
        affine = T.RandomAffine(10, translate=(0.0625, 0.0625), scale=(0.9, 1.1))
        return [T.RandomApply([affine], p=0.8)]
    jitter = 0.2 if augment == "medium" else 0.4
    steps = [
        T.RandomResizedCrop((size, size), scale=(0.6 if augment == "medium" else 0.35, 1.0)),
        T.RandomApply([T.ColorJitter(jitter, jitter, jitter, 0.02)], p=0.5),
        T.RandomApply([T.RandomAffine(10)], p=0.5),
    ]
    if augment == "heavy":
        steps.append(T.RandomApply([T.GaussianBlur(3)], p=0.3))
    return steps


# --- model, loss, optimizer ----------------------------------------------------------------------


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """The focal loss as tutorials write it: cross-entropy scaled by (1 - p_t) ** gamma."""
    ce = F.cross_entropy(logits, target, reduction="none")
    return ((1 - torch.exp(-ce)) ** gamma * ce).mean()


def make_loss(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of ``config`` as a callable (logits, target) -> loss."""
    if config.loss == "focal":
        return lambda logits, target: focal_loss(logits, target, config.focal_gamma)
    smoothing = config.label_smoothing if config.loss == "label_smoothing" else 0.0
    return torch.nn.CrossEntropyLoss(label_smoothing=smoothing)


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD over every parameter, as the config names it."""
    params, lr, wd = model.parameters(), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        nesterov = config.nesterov and config.momentum > 0
        return torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, nesterov=nesterov, weight_decay=wd
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def make_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """A timm backbone without pretrained weights."""
    import timm

    return timm.create_model(
        config.backbone,
        pretrained=False,
        num_classes=num_classes,
        drop_rate=config.dropout,
        drop_path_rate=config.drop_path or None,
    )


def metric_value(metric: str, y_true: np.ndarray, probs: np.ndarray) -> float:
    """The validation metric with scikit-learn (log_loss is minimised, the others maximised)."""
    if metric == "log_loss":
        return float(log_loss(y_true, probs, labels=list(range(probs.shape[1]))))
    y_pred = probs.argmax(axis=1)
    if metric == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    return float(f1_score(y_true, y_pred, average="macro"))


# --- the study ---------------------------------------------------------------------------------


class Reference:
    """The hand-written objective: k-fold training of one trial's config."""

    def __init__(self, space: Space, folder: Path, *, workers: int, log: Path) -> None:
        self.space, self.folder, self.workers = space, folder, workers
        self.settings = space.settings
        self.targets = np.array(datasets.ImageFolder(folder).targets)
        self.classes = int(self.targets.max()) + 1
        seed = space.settings.seed
        splitter = StratifiedKFold(self.settings.folds, shuffle=True, random_state=seed)
        self.folds = list(splitter.split(np.zeros(len(self.targets)), self.targets))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.epochs_trained = 0
        self.log = open(log, "w", newline="")  # noqa: SIM115 - closed in close()
        self.writer = csv.writer(self.log)
        self.writer.writerow(["trial", "fold", "epoch", "train_loss", "score", "seconds"])

    def close(self) -> None:
        """Close the CSV log."""
        self.log.close()

    def __call__(self, trial: optuna.Trial) -> float:
        config = self.space.config(self.space.sample(trial))
        scores = []
        for fold, (train_idx, val_idx) in enumerate(self.folds):
            reporter = trial if fold == 0 else None  # tutorials prune on the first fold only
            scores.append(self.train_fold(config, trial.number, fold, train_idx, val_idx, reporter))
        trial.set_user_attr("score_std", statistics.pstdev(scores))
        value = statistics.fmean(scores)
        print(f"trial {trial.number}: {value:.4f} {trial.params}", flush=True)
        return value

    def loaders(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
    ) -> tuple[DataLoader, DataLoader]:
        """Train and validation loaders that open every image from disk each epoch."""
        import timm

        data_config = timm.data.resolve_data_config({}, model=model)
        mean, std = data_config["mean"], data_config["std"]
        shared = dict(augment=config.augment, hflip=config.hflip, mean=mean, std=std)
        train_tf = tutorial_transform(config.image_size, train=True, **shared)
        val_tf = tutorial_transform(config.image_size, train=False, **shared)
        train_set = Subset(datasets.ImageFolder(self.folder, transform=train_tf), train_idx)
        val_set = Subset(datasets.ImageFolder(self.folder, transform=val_tf), val_idx)
        pin = self.device.type == "cuda"
        # drop_last: a last batch of one sample would crash BatchNorm (and hpo drops it too).
        train = DataLoader(
            train_set,
            batch_size=config.batch_size,
            shuffle=True,
            num_workers=self.workers,
            drop_last=True,
            pin_memory=pin,
        )
        val = DataLoader(
            val_set, batch_size=config.batch_size, num_workers=self.workers, pin_memory=pin
        )
        return train, val

    def train_fold(
        self,
        config: TrainConfig,
        number: int,
        fold: int,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        reporter: optuna.Trial | None,
    ) -> float:
        """Train one fold for every epoch; the fold's score is its best epoch's score."""
        model = make_model(config, self.classes).to(self.device)
        train, val = self.loaders(config, model, train_idx, val_idx)
        optimizer = make_optimizer(config, model)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        criterion = make_loss(config)
        minimise = config.metric == "log_loss"
        best = float("inf") if minimise else float("-inf")
        for epoch in range(config.epochs):
            tick = time.perf_counter()
            train_loss = self.train_epoch(model, train, optimizer, criterion)
            scheduler.step()
            score = self.validate(model, val, config.metric)
            self.epochs_trained += 1
            best = min(best, score) if minimise else max(best, score)
            seconds = time.perf_counter() - tick
            row = [number, fold, epoch, f"{train_loss:.5f}", f"{score:.5f}", f"{seconds:.3f}"]
            self.writer.writerow(row)
            if reporter is not None:
                reporter.report(score, epoch)
                if reporter.should_prune():
                    raise optuna.TrialPruned()
        return best

    def train_epoch(
        self,
        model: torch.nn.Module,
        loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> float:
        """One pass over the training loader; returns the mean loss."""
        model.train()
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(y), count + len(y)
        return total / max(count, 1)

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, loader: DataLoader, metric: str) -> float:
        """The validation metric over the whole validation loader."""
        model.eval()
        probs, labels = [], []
        for x, y in loader:
            probs.append(torch.softmax(model(x.to(self.device)), dim=1).cpu())
            labels.append(y)
        return metric_value(metric, torch.cat(labels).numpy(), torch.cat(probs).numpy())


def ignored_fields(space: Space) -> list[str]:
    """Config fields the space sets or searches that the tutorial loop does not honour."""
    defaults = TrainConfig().to_dict()
    named = {**space.fixed, **dict.fromkeys(space.searched)}
    return sorted(
        name
        for name in named
        if name not in HONOURED
        and name not in _IGNORED_ALWAYS
        and (name in space.searched or space.fixed[name] != defaults[name])
    )


def run_reference(space: Space, *, trials: int, workdir: Path, workers: int) -> ReferenceResult:
    """Run the hand-written study to ``trials`` trials and summarise it."""
    started = time.perf_counter()
    seed = space.settings.seed
    torch.manual_seed(seed)
    folder = image_folder(space.settings.data, workdir)
    objective = Reference(space, folder, workers=workers, log=workdir / "reference_log.csv")
    direction = "minimize" if space.settings.metric == "log_loss" else "maximize"
    study = optuna.create_study(
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    try:
        study.optimize(objective, n_trials=trials)
    finally:
        objective.close()
    states = [t.state for t in study.trials]
    best = study.best_trial
    return ReferenceResult(
        best_value=float(best.value),
        best_std=float(best.user_attrs.get("score_std", float("nan"))),
        best_params=best.params,
        seconds=time.perf_counter() - started,
        complete=states.count(optuna.trial.TrialState.COMPLETE),
        pruned=states.count(optuna.trial.TrialState.PRUNED),
        epochs=objective.epochs_trained,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: run the reference study and print (and optionally save) its outcome."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("space", type=Path, help="an hpo space file, e.g. spaces/baseline.py")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a setting")
    p.add_argument("--trials", type=int, help="trials to run (default: the space's `trials`)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (tutorials: 2-4)")
    p.add_argument("--json", type=Path, help="also write the result to this JSON file")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.quick:
        overrides += ["folds=2", "epochs=1"]
    trials = args.trials or (2 if args.quick else None)
    threads = common.set_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space, overrides)
    trials = trials or space.settings.trials
    workdir = args.workdir.absolute() / "reference"
    workdir.mkdir(parents=True, exist_ok=True)
    skipped = ignored_fields(space)
    common.header(
        "reference: a tutorial-style Optuna study (PIL every epoch, MedianPruner on fold 0)",
        threads,
        [f"the tutorial loop ignores: {', '.join(skipped)}"] if skipped else [],
    )
    result = run_reference(space, trials=trials, workdir=workdir, workers=args.workers)
    rows = [
        ["best CV score", result.best_value],
        ["best trial's fold std", result.best_std],
        ["wall seconds", result.seconds],
        ["trials finished (complete + pruned)", f"{result.complete + result.pruned}"],
        ["trials pruned", f"{result.pruned}"],
        ["epochs trained", f"{result.epochs}"],
    ]
    common.print_table(f"reference study on {space.settings.data}", ["what", "value"], rows)
    print(f"best params: {result.best_params}; per-epoch log: {workdir / 'reference_log.csv'}")
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
