"""`hpo export STUDY`: write studies/STUDY/export (the ensemble, its scores, ensemble.onnx)."""

from __future__ import annotations

import argparse

from search.cli.args import positive_int

# Listed here so that building the `hpo` parser imports nothing heavy (trainer.augment has them).
TTA_HELP = "none, hflip, flip4 or d4"


def cmd_export(args: argparse.Namespace) -> int:
    """`hpo export STUDY`: write studies/STUDY/export and print its scores."""
    from search.export.entry_points import export_from_storage
    from search.tracking.plots import study_figures

    export_from_storage(
        args.study,
        storage=args.storage,
        top_k=args.top_k,
        tta=args.tta,
        ensemble=args.ensemble,
        data=args.data,
        mlflow=False if args.no_mlflow else None,
        plots=study_figures,
    )
    return 0


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add the ``export`` verb to the `hpo` command."""
    parser = verbs.add_parser("export", help="export a study's best ensemble and its scores")
    parser.add_argument("study", help="study name (the space file's stem by default)")
    parser.add_argument("--storage", help="Optuna storage URL (default: studies/STUDY/study.db)")
    parser.add_argument(
        "--top-k", type=positive_int, help="select among the fold models of the K best trials"
    )
    parser.add_argument(
        "--ensemble",
        choices=("select", "best"),
        help="select: Caruana selection over the top K trials; best: the best trial alone",
    )
    parser.add_argument("--tta", metavar="MODE", help=f"test-time augmentation: {TTA_HELP}")
    parser.add_argument("--data", help="the study's data, if it moved (used for the holdout)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log it to MLflow")
    parser.set_defaults(handler=cmd_export)
