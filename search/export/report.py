"""What an export says about itself: its scores, report.md and best_space.py.

The scores (out-of-fold, and a holdout table of each member, soft and hard voting, without and
with TTA) are printed at the end of `hpo run` and by `hpo export`, written to report.md, and
logged to MLflow as flat metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.table import Table

from search.space.settings import SETTINGS
from search.space.spacefile import HARDWARE_FIELDS
from trainer import metrics
from trainer.ensemble import Ensemble, Manifest, hard_labels


@dataclass(frozen=True)
class Scores:
    """Accuracy, macro F1 and log loss of one model (no log loss for hard voting)."""

    accuracy: float
    f1_macro: float
    log_loss: float | None

    def get(self, metric: str) -> float | None:
        """The value of ``metric``."""
        return getattr(self, metric)


@dataclass(frozen=True)
class Row:
    """A model's holdout scores without and with test-time augmentation."""

    model: str
    plain: Scores
    tta: Scores


@dataclass(frozen=True)
class ExportScores:
    """Every score of an export: out-of-fold, and holdout rows when the study has a holdout."""

    study: str
    metric: str
    trials: tuple[int, ...]
    values: tuple[float, ...]
    oof_ensemble: Scores
    oof_trials: tuple[Scores, ...]
    oof_size: int
    holdout: tuple[Row, ...]
    holdout_size: int
    tta: str
    tta_compared: str

    def verdict(self) -> str | None:
        """Whether soft voting beats its best single member on the holdout (None without one)."""
        members = [r for r in self.holdout if r.model not in ("soft voting", "hard voting")]
        if not members:
            return None
        soft = next(r for r in self.holdout if r.model == "soft voting").plain.get(self.metric)
        best = members[0]
        for row in members[1:]:
            if metrics.is_better(
                self.metric, row.plain.get(self.metric), best.plain.get(self.metric)
            ):
                best = row
        value = best.plain.get(self.metric)
        beats = "beats" if metrics.is_better(self.metric, soft, value) else "does not beat"
        return (
            f"Soft voting {beats} its best single member ({best.model}) on the holdout: "
            f"{self.metric} {soft:.4f} vs {value:.4f}."
        )


def measure(labels: np.ndarray, probs: np.ndarray) -> Scores:
    """Scores of class probabilities ``(N, C)``."""
    predicted = probs.argmax(axis=1)
    return Scores(
        metrics.accuracy(labels, predicted),
        metrics.f1_macro(labels, predicted),
        metrics.log_loss(labels, probs),
    )


def _measure_labels(labels: np.ndarray, predicted: np.ndarray) -> Scores:
    return Scores(metrics.accuracy(labels, predicted), metrics.f1_macro(labels, predicted), None)


def holdout_rows(
    ensemble: Ensemble, images: Mapping[int, np.ndarray], labels: np.ndarray, tta: str
) -> list[Row]:
    """Each member, soft voting and hard voting, each without and with ``tta``."""
    plain = ensemble.member_probs(images, tta="none")
    viewed = ensemble.member_probs(images, tta=tta)
    rows = [
        Row(member.name, measure(labels, plain[i]), measure(labels, viewed[i]))
        for i, member in enumerate(ensemble.members)
    ]
    rows.append(Row("soft voting", measure(labels, plain.mean(0)), measure(labels, viewed.mean(0))))
    hard = [_measure_labels(labels, hard_labels(p)) for p in (plain, viewed)]
    rows.append(Row("hard voting", *hard))
    return rows


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table_cells(scores: ExportScores) -> tuple[list[str], list[list[str]]]:
    names = ("accuracy", "f1_macro", "log_loss")
    header = ["model"]
    for name in names:
        header += [name, f"{name} +{scores.tta_compared}"]
    body = [
        [row.model] + [_cell(s.get(n)) for n in names for s in (row.plain, row.tta)]
        for row in scores.holdout
    ]
    return header, body


def _oof_lines(scores: ExportScores) -> list[str]:
    m = scores.metric
    what = "soft voting of the top trials" if len(scores.trials) > 1 else "its fold models"
    lines = [
        f"Out-of-fold {m} on {scores.oof_size} images ({what}): {_cell(scores.oof_ensemble.get(m))}"
    ]
    for number, value, oof in zip(scores.trials, scores.values, scores.oof_trials, strict=True):
        lines.append(f"- trial {number}: out-of-fold {_cell(oof.get(m))} (value {value:.4f})")
    return lines


def show(scores: ExportScores, console: Console, *, folder: Path) -> None:
    """Print the scores of an export."""
    console.print(f"Exported study '{scores.study}' to {folder}")
    for line in _oof_lines(scores):
        console.print(line)
    if not scores.holdout:
        console.print("No holdout split (set holdout=0.2 for a score on never-seen images).")
        return
    header, body = _table_cells(scores)
    title = f"Holdout scores ({scores.holdout_size} images never used in the search)"
    table = Table(*header, title=title, title_justify="left")
    for cells in body:
        table.add_row(*cells)
    console.print(table)
    console.print(scores.verdict())


def markdown(scores: ExportScores, manifest: Manifest) -> str:
    """The export's report.md."""
    first = manifest.members[0]
    lines = [
        f"# Export of study `{scores.study}`",
        "",
        f"Soft-voting ensemble of {len(manifest.members)} fold models of trial(s) "
        f"{', '.join(map(str, scores.trials))} ({first.backbone}, {first.image_size} px); "
        f"test-time augmentation: {manifest.tta}.",
        "",
        "## Out-of-fold",
        "",
        *_oof_lines(scores),
        "",
    ]
    if scores.holdout:
        header, body = _table_cells(scores)
        lines += [f"## Holdout ({scores.holdout_size} images never used in the search)", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        lines += ["", scores.verdict() or "", ""]
    lines += [
        "## Use it",
        "",
        "    hpo predict <this folder> images/ --out predictions.csv",
        "",
        "    from trainer.ensemble import Ensemble",
        '    probs = Ensemble.load("<this folder>").predict(uint8_images)',
    ]
    return "\n".join(lines) + "\n"


def flat_metrics(scores: ExportScores) -> dict[str, float]:
    """Every score as an MLflow metric, e.g. ``export_holdout_soft_voting_tta_f1_macro``."""
    flat = {}
    for name in ("accuracy", "f1_macro", "log_loss"):
        flat[f"export_oof_{name}"] = scores.oof_ensemble.get(name)
        for row in scores.holdout:
            key = row.model.replace(" ", "_").replace("-", "_")
            flat[f"export_holdout_{key}_{name}"] = row.plain.get(name)
            flat[f"export_holdout_{key}_tta_{name}"] = row.tta.get(name)
    return {k: float(v) for k, v in flat.items() if v is not None}


# --- best_space.py ---------------------------------------------------------------------------


def _space_settings(settings: Mapping[str, Any], tta: str) -> dict[str, Any]:
    kept = {k: v for k, v in settings.items() if k == "data" or not SETTINGS[k].run_control}
    return {**kept, "trials": 1, "tta": tta}


def best_space_text(
    study: str, settings: Mapping[str, Any], trial: FrozenTrial, *, tta: str = "none"
) -> str:
    """A space file with the study's settings and every value of ``trial`` fixed."""
    config = trial.user_attrs["config"]
    metric = config["metric"]
    found = [name for name in config if name in trial.params]
    kept = [
        name
        for name in config
        if name not in trial.params and not (name in HARDWARE_FIELDS and config[name] is None)
    ]
    lines = [
        f'"""Best configuration of study {study!r}: trial {trial.number}, {metric} '
        f"{trial.value:.4f} (mean over folds).",
        "",
        "Nothing is searched; `hpo run` accepts this file as it is, e.g. to train it again on",
        "the same folds:",
        "",
        f"    hpo run studies/{study}/export/best_space.py --study {study}-best",
        '"""',
        "",
        "# Study settings (run control left to hpo's defaults)",
        *(f"{name} = {value!r}" for name, value in _space_settings(settings, tta).items()),
        "",
        f"# Found by the search (trial {trial.number})",
        *(f"{name} = {config[name]!r}" for name in found),
        "",
        "# Fixed in the study's space file, or hpo's defaults",
        *(f"{name} = {config[name]!r}" for name in kept),
    ]
    return "\n".join(lines) + "\n"
