"""`hpo status STUDY`: a study's trials, read from its storage (no torch, no MLflow)."""

from __future__ import annotations

import argparse


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add the ``status`` verb."""
    status = verbs.add_parser("status", help="print a study's trials from its storage")
    status.add_argument("study", help="study name (the space file's stem by default)")
    status.add_argument("--storage", help="Optuna storage URL (default: studies/STUDY/study.db)")
    status.add_argument("--top", type=int, default=10, help="rows to show (default 10)")
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the study's summary line and its top trials."""
    from search.study.report import make_console, summary_line, trials_table
    from search.study.storage import StudyPlace, load_hpo_study

    place = StudyPlace.of(args.study, args.storage)
    study = load_hpo_study(place)
    console = make_console(stderr=False)
    console.print(f"{place.name}: {summary_line(study)}")
    console.print(trials_table(study, top=args.top))
    return 0
