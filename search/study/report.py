"""Tables of a study's trials, read from storage (used by `hpo run` and `hpo status`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from search.keys import (
    BASELINE,
    DIVERGED,
    EPOCHS,
    FAIL_REASON_ATTR,
    FOLD_SCORES,
    PRUNED_AT,
    PRUNED_REASON,
    SCORE_STD,
    SECONDS,
    SURPLUS,
    WARM_START_FROM,
)


def make_console(*, stderr: bool = True) -> Console:
    """A console for tables; logs (not a terminal) get wide lines instead of 80 columns."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def visible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial except the placeholders a worker gave back (see runner._is_surplus)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]


def _rung(trial: FrozenTrial) -> int:
    where = trial.user_attrs.get(PRUNED_AT) or {}
    return -1 if where.get("rung") is None else int(where["rung"])


def ranked(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials best first, then pruned (latest rung first), then the rest by number."""
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: sign * t.value
    )
    pruned = sorted(
        (t for t in trials if t.state == TrialState.PRUNED),
        key=lambda t: (-_rung(t), t.number),
    )
    rest = [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    return complete + pruned + sorted(rest, key=lambda t: t.number)


def counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    """How many trials are in each state, by lower-case state name."""
    result: dict[str, int] = {}
    for t in trials:
        result[t.state.name.lower()] = result.get(t.state.name.lower(), 0) + 1
    return result


def format_params(params: dict[str, Any], limit: int = 6) -> str:
    """``lr=0.0031 backbone=test_vit ...`` with floats shortened."""
    parts = [f"{k}={_short(v)}" for k, v in params.items()]
    more = f" (+{len(parts) - limit})" if len(parts) > limit else ""
    return " ".join(parts[:limit]) + more


def shorten(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pruned_where(trial: FrozenTrial) -> str:
    """``pruned at fold 0, epoch 2: 0.7123`` (the score at that rung), or ``diverged in fold 1``.

    A pruned trial's score is measured at its rung (a fold's best epoch so far, or the mean of
    the folds it trained), never a cross-validated mean, so it is shown apart from those.
    """
    where = trial.user_attrs.get(PRUNED_AT) or {}
    fold, epoch, score = where.get("fold"), where.get("epoch"), where.get("score")
    if trial.user_attrs.get(DIVERGED):
        return f"diverged in fold {fold}"
    at = "pruned" if fold is None else f"pruned at fold {fold}"
    at += "" if epoch is None else f", epoch {epoch}"
    return at if score is None else f"{at}: {score:.4f}"


def _value_cell(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"{trial.value:.4f}"
    return "-"


def _note(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    origin = ""
    if attrs.get(WARM_START_FROM):
        origin = f"copied from {attrs[WARM_START_FROM]}; "
    elif attrs.get(BASELINE) is not None:
        origin = f"baseline {attrs[BASELINE]}; "
    if trial.state == TrialState.PRUNED:
        return origin + attrs.get(PRUNED_REASON, "pruned")
    if trial.state == TrialState.FAIL:
        return origin + attrs.get(FAIL_REASON_ATTR, "failed")
    if trial.state == TrialState.RUNNING:
        return origin + "running"
    return origin.removesuffix("; ")


def trials_table(study: optuna.Study, *, top: int = 10, title: str | None = None) -> Table:
    """The top ``top`` trials: CV mean and std (complete only), where pruned ones stopped, effort.

    A pruned trial's score is in its own column ("pruned at fold f, epoch e: score at that
    rung"), never beside the complete trials' cross-validated means as if it were one.
    """
    trials = ranked(study, visible_trials(study))
    table = Table(title=title, title_justify="left")
    headers = (
        "#",
        "state",
        "CV mean (optimistic)",
        "± std",
        "pruned at: score",
        "folds",
        "epochs",
        "seconds",
    )
    for header in (*headers, "params"):
        table.add_column(header, justify="left" if header in ("params", headers[4]) else "right")
    for trial in trials[:top]:
        attrs = trial.user_attrs
        std = attrs.get(SCORE_STD) if trial.state == TrialState.COMPLETE else None
        note = _note(trial)
        table.add_row(
            str(trial.number),
            trial.state.name.lower(),
            _value_cell(trial),
            "-" if std is None else f"{std:.4f}",
            pruned_where(trial) if trial.state == TrialState.PRUNED else "",
            str(len(attrs.get(FOLD_SCORES, []))),
            str(attrs.get(EPOCHS, "-")),
            f"{attrs.get(SECONDS, 0):.0f}",
            # Escaped: a note in brackets would otherwise be read as Rich markup and vanish.
            escape(format_params(trial.params) + (f"  [{note}]" if note else "")),
        )
    return table


def summary_line(study: optuna.Study, target: int | None = None) -> str:
    """``12/50 finished (...); best CV 0.9912 ± 0.0028 (optimistic; trial 7)``."""
    trials = visible_trials(study)
    n = counts(trials)
    finished = n.get("complete", 0) + n.get("pruned", 0)
    of = f"/{target}" if target else ""
    detail = ", ".join(f"{v} {k}" for k, v in sorted(n.items()))
    best = ""
    if n.get("complete"):
        b = study.best_trial
        spread = f"{b.value:.4f} ± {b.user_attrs.get(SCORE_STD, 0):.4f}"
        best = f"; best CV {spread} (optimistic; trial {b.number})"
    return f"{finished}{of} trials finished ({detail}){best}"
