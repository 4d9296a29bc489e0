"""Tables of a study's trials, read from storage (used by `hpo run` and `hpo status`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from search.keys import SURPLUS


def make_console(*, stderr: bool = True) -> Console:
    """A console for tables; logs (not a terminal) get wide lines instead of 80 columns."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def visible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial except the placeholders a worker gave back (see runner._is_surplus)."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]


def ranked(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials best first, then pruned (furthest first), then the rest by number."""
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: sign * t.value
    )
    pruned = sorted(
        (t for t in trials if t.state == TrialState.PRUNED),
        key=lambda t: (-len(t.user_attrs.get("fold_scores", [])), t.number),
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


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _value_cell(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"{trial.value:.4f}"
    scores = trial.user_attrs.get("fold_scores") or []
    return f"({sum(scores) / len(scores):.4f})" if scores else "-"


def _note(trial: FrozenTrial) -> str:
    if trial.state == TrialState.PRUNED:
        return trial.user_attrs.get("pruned_reason", "pruned")
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("fail_reason", "failed")
    if trial.state == TrialState.RUNNING:
        return "running"
    return ""


def trials_table(study: optuna.Study, *, top: int = 10, title: str | None = None) -> Table:
    """The top ``top`` trials: value (mean over folds), its std, folds, epochs, time, params."""
    trials = ranked(study, visible_trials(study))
    table = Table(title=title, title_justify="left")
    for header in ("#", "state", "value", "± std", "folds", "epochs", "seconds", "params"):
        table.add_column(header, justify="right" if header != "params" else "left")
    for trial in trials[:top]:
        attrs = trial.user_attrs
        std = attrs.get("score_std")
        table.add_row(
            str(trial.number),
            trial.state.name.lower(),
            _value_cell(trial),
            "-" if std is None else f"{std:.4f}",
            str(len(attrs.get("fold_scores", []))),
            str(attrs.get("epochs", "-")),
            f"{attrs.get('seconds', 0):.0f}",
            format_params(trial.params) + (f"  [{_note(trial)}]" if _note(trial) else ""),
        )
    return table


def summary_line(study: optuna.Study, target: int | None = None) -> str:
    """``12/50 finished (9 complete, 3 pruned, 1 failed, 1 running); best 0.9912 (trial 7)``."""
    trials = visible_trials(study)
    n = counts(trials)
    finished = n.get("complete", 0) + n.get("pruned", 0)
    of = f"/{target}" if target else ""
    detail = ", ".join(f"{v} {k}" for k, v in sorted(n.items()))
    best = ""
    if n.get("complete"):
        b = study.best_trial
        best = f"; best {b.value:.4f} ± {b.user_attrs.get('score_std', 0):.4f} (trial {b.number})"
    return f"{finished}{of} trials finished ({detail}){best}"
