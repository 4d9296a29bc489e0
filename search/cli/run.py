"""`hpo run SPACE [key=value ...]`: run (or resume) a study from a space file."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from search.cli.args import positive_float, positive_int
from search.hooks import Outcome

if TYPE_CHECKING:
    from search.engine.prefork import Serve


def add_parser(verbs: argparse._SubParsersAction, *, serve: Serve) -> None:
    """Add the ``run`` verb; ``serve`` is what a worker forked from `hpo run` runs."""
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
        "--warm-start", metavar="STUDY", help="start from the finished trials of STUDY"
    )
    run.add_argument(
        "--workers", type=positive_int, default=1, help="worker processes on this machine"
    )
    run.add_argument("--gpus", type=_gpu_list, help="GPUs for the workers, e.g. 0,1,2,3")
    run.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    run.add_argument("--no-export", action="store_true", help="skip the export at the end")
    run.set_defaults(handler=cmd_run, serve=serve)


def _gpu_list(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise argparse.ArgumentTypeError(f"expected GPU numbers like 0,1,2, not {text!r}")
    return gpus


def cmd_run(args: argparse.Namespace) -> int:
    """Run the study to its target (with --workers, in worker processes)."""
    from search.console import make_console
    from search.context import RunRequest
    from search.engine.run import run
    from search.engine.workers import check_gpus

    check_gpus(args.gpus)  # before the study exists: a missing GPU is not a CPU run
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
        warm_start=args.warm_start,
    )
    if request.workers > 1:
        from search.engine.workers import run_workers

        outcome = run_workers(request, gpus=args.gpus, serve=args.serve)
    else:
        from search.engine.workers import pin_this_process

        pin_this_process(args.gpus)
        outcome = run(request)
    if outcome == Outcome.TIMEOUT:
        make_console().print("Stopped at --timeout; run the same command again to go on.")
    return 0
