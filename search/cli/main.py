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

from search.cli.args import positive_float, positive_int
from search.export import predict  # light modules: parsers only
from search.export import study_export as export
from search.tracking import ui
from trainer.errors import UserError

Handler = Callable[[argparse.Namespace], int]


def _quiet_libraries() -> None:
    import optuna

    from search.tracking.tracker import prepare_mlflow

    prepare_mlflow()  # before anything imports mlflow: its retry and logging defaults
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*least populated class.*")


def cmd_run(args: argparse.Namespace) -> int:
    from search.engine.run import RunRequest, run
    from search.study.report import make_console

    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data={args.data}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    request = RunRequest(
        space=args.space,
        overrides=overrides,
        trials=args.trials,
        timeout=args.timeout,
        study=args.study,
        storage=args.storage,
        worker=args.worker_index,
        workers=len(args.gpus) if args.gpus and args.workers == 1 else args.workers,
        export=not args.no_export,
    )
    if request.workers > 1:
        from search.engine.workers import run_workers

        outcome = run_workers(request, gpus=args.gpus)
    else:
        outcome = run(request)
    if outcome == "timeout":
        make_console().print("Stopped at --timeout; run the same command again to go on.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from search.study.report import make_console, summary_line, trials_table
    from search.study.storage import StudyPlace, load_hpo_study

    place = StudyPlace.of(args.study, args.storage)
    study = load_hpo_study(place)
    console = make_console(stderr=False)
    console.print(f"{place.name}: {summary_line(study)}")
    console.print(trials_table(study, top=args.top))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from trainer.sources import load_table
    from trainer.summary import summarize

    print(summarize(load_table(args.path)).to_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb."""
    parser = argparse.ArgumentParser(
        prog="hpo", description="Hyperparameter search and cross-validation for image classifiers."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    _add_run(verbs)
    status = verbs.add_parser("status", help="print a study's trials from its storage")
    status.add_argument("study", help="study name (the space file's stem by default)")
    status.add_argument("--storage", help="Optuna storage URL (default: studies/STUDY/study.db)")
    status.add_argument("--top", type=int, default=10, help="rows to show (default 10)")
    status.set_defaults(handler=cmd_status)
    data = verbs.add_parser("data", help="check a dataset: images per class, sizes, bad files")
    data.add_argument("path", help="a folder of class subfolders, a CSV, or builtin:digits")
    data.set_defaults(handler=cmd_data)
    export.add_parser(verbs)
    predict.add_parser(verbs)
    ui.add_parser(verbs)
    return parser


def _gpu_list(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise argparse.ArgumentTypeError(f"expected GPU numbers like 0,1,2, not {text!r}")
    return gpus


def _add_run(verbs: argparse._SubParsersAction) -> None:
    run = verbs.add_parser("run", help="run (or resume) a study from a space file")
    run.add_argument("space", help="the space file, e.g. spaces/baseline.py")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="override a setting")
    run.add_argument("--trials", type=positive_int, help="target of finished trials")
    run.add_argument("--timeout", type=positive_float, help="stop starting trials after S sec")
    run.add_argument("--study", help="study name (default: the space file's stem)")
    run.add_argument("--storage", help="Optuna storage URL (default: studies/NAME/study.db)")
    run.add_argument("--data", help="data to use instead of the space file's `data`")
    run.add_argument("--seed", type=int, help="seed for splits, sampler and training")
    run.add_argument(
        "--workers", type=positive_int, default=1, help="worker processes on this machine"
    )
    run.add_argument("--gpus", type=_gpu_list, help="GPUs for the workers, e.g. 0,1,2,3")
    run.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    run.add_argument("--no-export", action="store_true", help="skip the export at the end")
    run.set_defaults(handler=cmd_run)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the verb, and turn user errors into exit status 2."""
    parser = build_parser()
    # key=value overrides may come after flags, which argparse's positional parsing refuses.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.verb != "run" or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.verb != "predict":  # predict uses neither; `predict --onnx` must not import torch
        _quiet_libraries()
    try:
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


if __name__ == "__main__":
    sys.exit(main())
