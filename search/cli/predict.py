"""`hpo predict EXPORT INPUT`: label images with an exported ensemble (torch or onnxruntime)."""

from __future__ import annotations

import argparse
import sys

from search.cli.args import positive_int
from search.export.predict import EXPORT_TTA, predict_to_csv


def cmd_predict(args: argparse.Namespace) -> int:
    """`hpo predict EXPORT INPUT`: write predictions.csv (or ``--out``)."""
    table, failed = predict_to_csv(
        args.export,
        args.input,
        out=args.out,
        tta=args.tta,
        device=args.device,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty() or args.progress,
        onnx=args.onnx,
    )
    if failed:
        first = ", ".join(f"{path} ({why})" for path, why in list(failed.items())[:3])
        print(
            f"hpo: {len(failed)} of {len(table)} files could not be read and have no label "
            f"(first: {first}).",
            file=sys.stderr,
        )
    print(f"Wrote {len(table) - len(failed)} predictions to {args.out}")
    return 0


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add the ``predict`` verb to the `hpo` command."""
    parser = verbs.add_parser("predict", help="label images with an exported ensemble")
    parser.add_argument("export", help="the export folder, e.g. studies/STUDY/export")
    parser.add_argument("input", help="a folder of images (searched recursively) or a CSV")
    parser.add_argument("--out", default="predictions.csv", help="output CSV (predictions.csv)")
    parser.add_argument(
        "--tta",
        nargs="?",
        const=EXPORT_TTA,
        metavar="MODE",
        help="test-time augmentation: none, hflip, flip4 or d4; alone: the export's (or hflip)",
    )
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="predict with the export's ensemble.onnx in onnxruntime (no PyTorch needed)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch")
    parser.add_argument("--progress", action="store_true", help="progress bar even in a log")
    parser.set_defaults(handler=cmd_predict)
