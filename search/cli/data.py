"""`hpo data PATH`: check a dataset (images per class, sizes, groups, unreadable files)."""

from __future__ import annotations

import argparse


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add the ``data`` verb."""
    data = verbs.add_parser("data", help="check a dataset: images per class, sizes, bad files")
    data.add_argument("path", help="a folder of class subfolders, a CSV, or builtin:digits")
    data.set_defaults(handler=cmd_data)


def cmd_data(args: argparse.Namespace) -> int:
    """Print the summary of the dataset at ``args.path``."""
    from trainer.sources import load_table
    from trainer.summary import summarize

    print(summarize(load_table(args.path)).to_text())
    return 0
