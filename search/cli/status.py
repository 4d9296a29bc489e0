"""`hpo status STUDY [--trial N]`: a study's trials, read from its storage (no torch, no MLflow)."""

from __future__ import annotations

import argparse


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add the ``status`` verb."""
    status = verbs.add_parser("status", help="print a study's trials from its storage")
    status.add_argument("study", help="study name (the space file's stem by default)")
    status.add_argument("--storage", help="Optuna storage URL (default: studies/STUDY/study.db)")
    status.add_argument("--top", type=int, default=10, help="rows to show (default 10)")
    status.add_argument(
        "--trial", type=int, metavar="N", help="show trial N in full (why it was pruned, params)"
    )
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the study's summary line and its top trials, or one trial in full."""
    from search.console import make_console
    from search.study.storage import StudyError, StudyPlace, load_hpo_study
    from search.study.tables import summary_line, trial_details, trials_table

    place = StudyPlace.of(args.study, args.storage)
    study = load_hpo_study(place)
    console = make_console(stderr=False)
    if args.trial is None:
        console.print(f"{place.name}: {summary_line(study)}", markup=False)
        console.print(trials_table(study, top=args.top))
        return 0
    try:
        lines = trial_details(study, args.trial)
    except KeyError:
        have = _which_trials([t.number for t in study.get_trials(deepcopy=False)])
        raise StudyError(
            f"Study '{place.name}' has no trial {args.trial} ({have}); pass one of those."
        ) from None
    for line in lines:
        console.print(line, markup=False)
    return 0


def _which_trials(numbers: list[int]) -> str:
    if not numbers:
        return "it has none yet"
    if len(numbers) == 1:
        return f"its only trial is {numbers[0]}"
    return f"its trials are {min(numbers)} to {max(numbers)}"
