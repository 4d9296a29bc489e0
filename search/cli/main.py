"""The `hpo` command: one small handler per verb, each returning an exit status.

Errors a user can fix end in one sentence on stderr and exit status 2, never a traceback;
Ctrl-C ends with a note on how to resume and exit status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

# Before albumentations is imported anywhere: it would ask PyPI for updates on every start.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from search.cli import cache, dashboard, data, export, predict, run, status, ui, weights
from search.cli.args import ArgumentsError, Parser, with_fix
from trainer.errors import UserError

Handler = Callable[[argparse.Namespace], int]


def _quiet_libraries() -> None:
    import optuna

    from search.tracking.writer import prepare_mlflow

    prepare_mlflow()  # before anything imports mlflow: its retry and logging defaults
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*least populated class.*")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = Parser(
        prog="hpo", description="Hyperparameter search and cross-validation for image classifiers."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # A worker forked from `hpo run` runs its `hpo` command line with this very function.
    run.add_parser(verbs, serve=main)
    status.add_parser(verbs)
    data.add_parser(verbs)
    export.add_parser(verbs)
    predict.add_parser(verbs)
    ui.add_parser(verbs)
    dashboard.add_parser(verbs)
    cache.add_parser(verbs)
    weights.add_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the verb, and turn user errors into exit status 2."""
    try:
        args = _parse(argv)
        if args.verb != "predict":  # predict uses neither; `predict --onnx` imports no torch
            _quiet_libraries()
        return args.handler(args)
    except UserError as err:
        print(f"hpo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nhpo: interrupted; finished trials are saved. Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed arguments; `ArgumentsError` for a command line that does not parse."""
    args, extra = build_parser().parse_known_args(argv)
    # key=value overrides may come after flags, which argparse's positional parsing refuses.
    if extra and (args.verb != "run" or any(x.startswith("-") or "=" not in x for x in extra)):
        raise ArgumentsError(
            with_fix(f"unrecognized arguments: {' '.join(extra)}", f"hpo {args.verb}")
        )
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


if __name__ == "__main__":
    sys.exit(main())
