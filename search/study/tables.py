"""Tables of a study's trials, read from storage (used by `hpo run` and `hpo status`).

A table fits the console it is printed on: one line per trial, short columns, and a params
column that shows only the searched values that differ among the trials shown, cut to the room
left. `hpo status STUDY --trial N` shows one trial in full (`trial_details`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, ConsoleOptions
from rich.table import Table
from rich.text import Text

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


# No folds column: a complete trial trained them all, a pruned one says where it stopped.
_HEADERS = ("#", "state", "CV (optimistic)", "pruned at", "epochs", "sec")
_GAP = 1  # characters between two columns: every one counts at 80 columns
_MIN_PARAMS = 12  # a params column narrower than this is left out


def trials_table(study: optuna.Study, *, top: int = 10, title: str | None = None) -> TrialsTable:
    """The top ``top`` trials: CV mean ± std (complete only), where pruned ones stopped, effort.

    A pruned trial's score is in its own column ("pruned at": fold, epoch and the score at that
    rung), never beside the complete trials' cross-validated means as if it were one.
    """
    return TrialsTable(ranked(study, visible_trials(study))[:top], title)


class TrialsTable:
    """Trials as a Rich table as wide as the console it is printed on, one line per trial.

    Args:
        trials: The trials to show, in order.
        title: The table's title, or None.
    """

    def __init__(self, trials: Sequence[FrozenTrial], title: str | None) -> None:
        self.trials, self.title = list(trials), title
        self.rows = [_cells(t) for t in self.trials]
        self.params = _differing_params(self.trials)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        yield self.table(options.max_width)

    def table(self, width: int) -> Table:
        """The table for a console ``width`` characters wide."""
        widths = [max([len(h), *(len(r[i]) for r in self.rows)]) for i, h in enumerate(_HEADERS)]
        room = width - sum(widths) - _GAP * len(widths)
        table = Table(
            title=self.title,
            title_justify="left",
            caption=_CAPTION,
            caption_justify="left",
            box=None,
            padding=(0, _GAP, 0, 0),
            pad_edge=False,
        )
        for header in _HEADERS:
            table.add_column(header, justify="left" if header == "pruned at" else "right")
        if room >= _MIN_PARAMS:
            table.add_column("params", no_wrap=True)
        for trial, row in zip(self.trials, self.rows, strict=True):
            extra = [_params_cell(trial, self.params, room)] if room >= _MIN_PARAMS else []
            table.add_row(*row, *extra)
        return table


_CAPTION = (
    "CV: mean ± std over folds of the best of many trials (optimistic; report.md has the "
    "holdout score). `hpo status STUDY --trial N` shows a trial in full."
)


def _cells(trial: FrozenTrial) -> list[str]:
    attrs = trial.user_attrs
    complete = trial.state == TrialState.COMPLETE
    std = attrs.get(SCORE_STD) or 0.0
    return [
        str(trial.number),
        trial.state.name.lower(),
        f"{trial.value:.4f} ± {std:.4f}" if complete else "-",
        _pruned_cell(trial) if trial.state == TrialState.PRUNED else "",
        str(attrs.get(EPOCHS, "-")),
        f"{attrs.get(SECONDS, 0):.0f}",
    ]


def _pruned_cell(trial: FrozenTrial) -> str:
    """``fold 0, ep 2: 0.7123``, ``fold 1: 0.8500`` or ``diverged in fold 1``."""
    where = trial.user_attrs.get(PRUNED_AT) or {}
    fold, epoch, score = where.get("fold"), where.get("epoch"), where.get("score")
    if trial.user_attrs.get(DIVERGED):
        return f"diverged in fold {fold}"
    at = "" if fold is None else f"fold {fold}"
    at += "" if epoch is None else f", ep {epoch}"
    return at if score is None else f"{at}: {score:.4f}".lstrip(": ")


def _differing_params(trials: Sequence[FrozenTrial]) -> list[str]:
    """The parameters whose values differ among ``trials`` (all for one), shortest values first."""
    names = list(dict.fromkeys(name for t in trials for name in t.params))
    if len(trials) > 1:
        names = [n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1]
    # Short values first: cut to the room left, the line then still shows most parameters.
    return sorted(names, key=lambda n: max(len(_short(t.params.get(n))) for t in trials))


def _params_cell(trial: FrozenTrial, names: Sequence[str], width: int) -> Text:
    shown = {n: trial.params[n] for n in names if n in trial.params}
    note = _note(trial)
    text = format_params(shown, limit=len(shown)) + (f"  [{note}]" if note else "")
    return Text(shorten(text, width))  # Text: a note in brackets is not read as markup


def _note(trial: FrozenTrial) -> str:
    """Where a trial came from, and why it failed (a pruned one's reason is in its column)."""
    attrs = trial.user_attrs
    origin = ""
    if attrs.get(WARM_START_FROM):
        origin = f"copied from {attrs[WARM_START_FROM]}; "
    elif attrs.get(BASELINE) is not None:
        origin = f"baseline {attrs[BASELINE]}; "
    if trial.state == TrialState.FAIL:
        return origin + attrs.get(FAIL_REASON_ATTR, "failed")
    if trial.state == TrialState.RUNNING:
        return origin + "running"
    return origin.removesuffix("; ")


def trial_details(study: optuna.Study, number: int) -> list[str]:
    """Everything about trial ``number``, one fact a line: state, scores, why it ended, params.

    Raises:
        KeyError: The study has no such trial.
    """
    trial = next((t for t in visible_trials(study) if t.number == number), None)
    if trial is None:
        raise KeyError(number)
    attrs = trial.user_attrs
    folds = ", ".join(f"{s:.4f}" for s in attrs.get(FOLD_SCORES, []))
    lines = [f"trial {trial.number}: {trial.state.name.lower()}"]
    if trial.state == TrialState.COMPLETE:
        lines.append(f"CV mean {trial.value:.4f} ± {attrs.get(SCORE_STD) or 0:.4f} (optimistic)")
    lines.append(f"fold scores: {folds or '-'}")
    lines.append(f"epochs {attrs.get(EPOCHS, '-')}, {attrs.get(SECONDS, 0):.0f} s")
    if trial.state == TrialState.PRUNED:
        lines.append(f"{pruned_where(trial)}")
        lines.append(f"why: {attrs.get(PRUNED_REASON, 'pruned')}")
    if _note(trial):
        lines.append(f"note: {_note(trial)}")
    lines += [f"  {name} {_short(value)}" for name, value in trial.params.items()]
    return lines


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
