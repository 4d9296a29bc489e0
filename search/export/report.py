"""What an export says about itself: its scores, report.md and best_space.py.

Every out-of-fold score is labelled "CV (optimistic)": the best epoch of each fold, the best
trials and the selection's weights were all chosen on those predictions. The headline is the
holdout score when the study has a holdout. The scores are printed at the end of `hpo run` and
by `hpo export`, written to report.md, and logged to MLflow as flat metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial
from rich.console import Console, ConsoleOptions
from rich.table import Table

from search import keys
from search.space.settings import StudySettings
from search.space.spacefile import HARDWARE_FIELDS
from search.study.tables import shorten
from trainer import metrics
from trainer.inference.manifest import Manifest

CV = "CV (optimistic)"
_NAMES = ("accuracy", "f1_macro", "log_loss")


@dataclass(frozen=True)
class Scores:
    """Accuracy, macro F1 and log loss of one model."""

    accuracy: float
    f1_macro: float
    log_loss: float | None

    def get(self, metric: str) -> float | None:
        """The value of ``metric``."""
        return getattr(self, metric)


@dataclass(frozen=True)
class Row:
    """One model's scores: out-of-fold (optimistic), and on the holdout without and with TTA.

    Attributes:
        model: What is scored, e.g. ``selection`` or ``trial 3 soft voting``.
        cv: Scores of its stored out-of-fold predictions.
        plain: Holdout scores without TTA (None without a holdout).
        tta: Holdout scores with the compared TTA mode.
        key: Its name in MLflow metric keys (``export``, ``trial3``, ``best_fold_model``).
    """

    model: str
    cv: Scores
    plain: Scores | None
    tta: Scores | None
    key: str = "export"


@dataclass(frozen=True)
class ExportScores:
    """Every score of an export; ``rows[0]`` is the exported ensemble.

    Attributes:
        candidates: The trials the export could draw on, best first, and their values.
        counts: How often the selection added each candidate (weights: counts over their sum).
    """

    study: str
    metric: str
    mode: str
    candidates: tuple[int, ...]
    values: tuple[float, ...]
    counts: tuple[int, ...]
    rows: tuple[Row, ...]
    cv_size: int
    holdout_size: int
    tta: str
    tta_compared: str

    @property
    def trials(self) -> tuple[int, ...]:
        """The trials whose fold models the export holds."""
        return tuple(n for n, c in zip(self.candidates, self.counts, strict=True) if c)

    @property
    def weights(self) -> dict[int, float]:
        """Each exported trial's share of the vote."""
        total = sum(self.counts)
        return {n: c / total for n, c in zip(self.candidates, self.counts, strict=True) if c}

    def headline(self) -> tuple[str, float]:
        """``("holdout", value)`` of the export with its own TTA, else ``(CV, value)``."""
        export = self.rows[0]
        holdout = export.tta if self.tta != "none" else export.plain
        if holdout is None:
            return CV, float(export.cv.get(self.metric))
        return "holdout", float(holdout.get(self.metric))

    def verdict(self) -> str | None:
        """How the export compares on the holdout with the other rows (None without one)."""
        export = self.rows[0]
        if export.plain is None:
            return None
        value = export.plain.get(self.metric)
        parts = []
        for row in self.rows[1:]:
            other = row.plain.get(self.metric) if row.plain else float("nan")
            if metrics.is_better(self.metric, value, other):
                word = "beats"
            elif value == other:
                word = "equals"
            else:
                word = "does not beat"
            parts.append(f"{word} {row.model} ({other:.4f})")
        lead = f"On the holdout without TTA the {export.model} ({value:.4f})"
        return f"{lead} " + "; ".join(parts) + "."


def measure(labels: np.ndarray, probs: np.ndarray) -> Scores:
    """Scores of class probabilities ``(N, C)``."""
    predicted = probs.argmax(axis=1)
    return Scores(
        metrics.accuracy(labels, predicted),
        metrics.f1_macro(labels, predicted),
        metrics.log_loss(labels, probs),
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table_cells(scores: ExportScores) -> tuple[list[str], list[list[str]]]:
    m = scores.metric
    header = ["model", f"{m} {CV}"]
    viewed = scores.tta_compared != "none"  # no column of a TTA the space rules out
    if scores.holdout_size:
        for name in _NAMES:
            header += [f"{name} holdout", *([f"{name} +{scores.tta_compared}"] if viewed else [])]
    body = []
    for row in scores.rows:
        cells = [row.model, _cell(row.cv.get(m))]
        if scores.holdout_size:
            for name in _NAMES:
                shown = (row.plain, row.tta) if viewed else (row.plain,)
                cells += [_cell(s.get(name) if s else None) for s in shown]
        body.append(cells)
    return header, body


def _pairs(scores: ExportScores) -> list[tuple[int, int]]:
    return list(zip(scores.candidates, scores.counts, strict=True))


def _ensemble_line(scores: ExportScores, manifest: Manifest) -> str:
    first = manifest.members[0]
    shares = ", ".join(f"trial {n} x{c}" for n, c in _pairs(scores) if c)
    if scores.mode == "select":
        what = (
            f"Ensemble selection (Caruana) over the fold models of the {len(scores.candidates)} "
            f"best trials, on their out-of-fold predictions: {shares}"
        )
    else:
        what = f"Soft voting of the best trial's fold models (trial {scores.trials[0]})"
    sizes = sorted({m.image_size for m in manifest.members})
    return (
        f"{what}; {len(manifest.members)} fold models ({first.backbone}, "
        f"{'/'.join(map(str, sizes))} px); test-time augmentation: {manifest.tta}."
    )


def _headline_line(scores: ExportScores) -> str:
    kind, value = scores.headline()
    if kind == "holdout":
        tta = f", with the export's TTA ({scores.tta})" if scores.tta != "none" else ""
        return (
            f"Headline: {scores.metric} {value:.4f} on the holdout ({scores.holdout_size} images "
            f"never used in the search{tta})."
        )
    return (
        f"Headline: {scores.metric} {value:.4f}, {CV} on {scores.cv_size} images: biased upwards "
        "(best epochs, trials and weights were chosen on it); a study with holdout > 0 gives "
        "an honest score."
    )


def show(scores: ExportScores, console: Console, *, folder: Path, manifest: Manifest) -> None:
    """Print the scores of an export."""
    console.print(f"Exported study '{scores.study}' to {folder}")
    console.print(_ensemble_line(scores, manifest))
    console.print(_headline_line(scores))
    console.print(ScoresTable(scores))
    verdict = scores.verdict()
    if verdict:
        console.print(verdict)


class ScoresTable:
    """The export's scores as wide as the console: every metric when they fit, else its metric.

    Args:
        scores: The export's scores.
    """

    def __init__(self, scores: ExportScores) -> None:
        self.scores = scores

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        header, body = _table_cells(self.scores)
        title = f"Scores of the export ({self.scores.metric})"
        if _boxed_width(header, body) <= options.max_width:
            table = Table(*header, title=title, title_justify="left")
            for cells in body:
                table.add_row(*cells)
            yield table
            return
        yield _compact_table(self.scores, options.max_width, f"{title}; all metrics in report.md")


def _boxed_width(header: Sequence[str], body: Sequence[Sequence[str]]) -> int:
    """Characters a boxed Rich table of these cells needs: cells, padding and rules."""
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(header)]
    return sum(widths) + 3 * len(widths) + 1


def _compact_table(scores: ExportScores, width: int, title: str) -> Table:
    """The export's metric only, in borderless columns; model names cut to the room left."""
    m, viewed = scores.metric, scores.tta_compared != "none"
    header = [CV]
    if scores.holdout_size:
        header += ["holdout", *([f"+{scores.tta_compared}"] if viewed else [])]
    rows = []
    for row in scores.rows:
        shown = (row.plain, row.tta) if viewed else (row.plain,)
        holdout = [_cell(s.get(m) if s else None) for s in shown] if scores.holdout_size else []
        rows.append([_cell(row.cv.get(m)), *holdout])
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    room = max(width - sum(widths) - 2 * len(widths), 12)
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("model", no_wrap=True)
    for name in header:
        table.add_column(name, justify="right", no_wrap=True)
    for row, cells in zip(scores.rows, rows, strict=True):
        table.add_row(shorten(row.model, room), *cells)
    return table


def _candidate_lines(scores: ExportScores) -> list[str]:
    lines = []
    weights = scores.weights
    for number, value in zip(scores.candidates, scores.values, strict=True):
        share = f"weight {weights[number]:.2f}" if number in weights else "not chosen"
        lines.append(f"- trial {number}: value {value:.4f} (mean over folds, {CV}); {share}")
    return lines


def markdown(
    scores: ExportScores, manifest: Manifest, *, onnx_check: str, plots: Sequence[str] = ()
) -> str:
    """The export's report.md; ``plots`` are the study's figures, relative to the export."""
    header, body = _table_cells(scores)
    lines = [
        f"# Export of study `{scores.study}`",
        "",
        _headline_line(scores),
        "",
        _ensemble_line(scores, manifest),
        "",
        *_candidate_lines(scores),
        "",
        "## Scores",
        "",
        f"{CV}: out-of-fold predictions of the fold models on the {scores.cv_size} "
        "cross-validated images, biased upwards because each fold's best epoch, the best trials "
        "and the selection's weights were chosen on them.",
    ]
    if scores.holdout_size and scores.tta_compared != "none":
        lines += [
            f"Holdout: {scores.holdout_size} images no trial ever saw; the columns "
            f"+{scores.tta_compared} add that test-time augmentation.",
        ]
    elif scores.holdout_size:
        lines += [
            f"Holdout: {scores.holdout_size} images no trial ever saw, scored without "
            "test-time augmentation (every mode flips images, and the space does not allow it).",
        ]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", scores.verdict() or "No holdout: only the optimistic CV scores exist.", ""]
    lines += [
        "## Use it",
        "",
        "    hpo predict <this folder> images/ --out predictions.csv",
        "    hpo predict <this folder> images/ --onnx     # onnxruntime, no PyTorch",
        "",
        "    from trainer.inference.ensemble import Ensemble",
        '    probs = Ensemble.load("<this folder>").predict(uint8_images)',
        "",
        f"`ensemble.onnx` takes uint8 RGB images (N, H, W, 3); {onnx_check}",
    ]
    if plots:
        lines += ["", "## The search", ""]
        lines += ["The study's trials as they stood at this export (the study run in MLflow holds"]
        lines += [
            "the same plots, redrawn while the study ran); each score is the optimistic CV:",
            "",
        ]
        lines += [f"- [{_PLOT_TITLES.get(Path(p).name, p)}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


_PLOT_TITLES = {
    keys.HISTORY_ARTIFACT: "optimisation history",
    keys.IMPORTANCE_ARTIFACT: "parameter importances (Optuna's default evaluator)",
    keys.SLICE_ARTIFACT: "slice plot: the score against each searched parameter",
    keys.PARALLEL_ARTIFACT: "parallel coordinates of the searched parameters",
}


def flat_metrics(scores: ExportScores) -> dict[str, float]:
    """Every score as an MLflow metric, e.g. ``export_trial3_holdout_tta_f1_macro``.

    Out-of-fold scores carry ``cv_optimistic`` in their key, so a chart of them says so.
    """
    kind, value = scores.headline()
    label = "holdout" if kind == "holdout" else "cv_optimistic"
    flat: dict[str, float | None] = {f"export_headline_{label}_{scores.metric}": value}
    for row in scores.rows:
        for name in _NAMES:
            flat[f"export_{row.key}_cv_optimistic_{name}"] = row.cv.get(name)
            if row.plain is not None:
                flat[f"export_{row.key}_holdout_{name}"] = row.plain.get(name)
            if row.tta is not None and scores.tta_compared != "none":
                flat[f"export_{row.key}_holdout_tta_{name}"] = row.tta.get(name)
    return {k: float(v) for k, v in flat.items() if v is not None}


# --- best_space.py ---------------------------------------------------------------------------


def _space_settings(settings: StudySettings, tta: str) -> dict[str, Any]:
    return {"data": settings.data, **settings.identity(), "trials": 1, "tta": tta}


def best_space_text(
    study: str, settings: StudySettings, trial: FrozenTrial, *, tta: str = "none"
) -> str:
    """A space file with the study's settings and every value of ``trial`` fixed."""
    config = trial.user_attrs[keys.CONFIG_ATTR]
    metric = config["metric"]
    found = [name for name in config if name in trial.params]
    kept = [
        name
        for name in config
        if name not in trial.params and not (name in HARDWARE_FIELDS and config[name] is None)
    ]
    lines = [
        f'"""Best configuration of study {study!r}: trial {trial.number}, {metric} '
        f"{trial.value:.4f} (mean over folds; {CV}).",
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
