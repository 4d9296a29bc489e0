"""`hpo cache` lists the decoded-image caches and the backbone feature caches computed from
them; `hpo cache clean` removes those no study uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from search.console import make_console
from search.study.caches import describe_age, list_caches, remove_unused


def add_parser(verbs: argparse._SubParsersAction) -> None:
    """Add ``hpo cache [clean] [--dir DIR]``."""
    cache = verbs.add_parser("cache", help="list the image caches; 'clean' removes unused ones")
    cache.add_argument("action", nargs="?", choices=("list", "clean"), default="list")
    cache.add_argument(
        "--dir", type=Path, help="cache folder (default: $HPO_CACHE_DIR or studies/cache)"
    )
    cache.add_argument("--studies", type=Path, default=Path("studies"), help="studies folder")
    cache.set_defaults(handler=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> int:
    """Print the caches, or remove those that no study in ``--studies`` uses."""
    directory = args.dir or _default_dir()
    entries = list_caches(directory, args.studies)
    console = make_console(stderr=False)
    if args.action == "clean":
        removed = remove_unused(entries)
        freed = sum(e.bytes for e in removed) / 2**20
        kept = len(entries) - len(removed)
        console.print(
            f"Removed {len(removed)} unused caches ({freed:.1f} MiB); kept {kept} in use."
        )
        return 0
    if not entries:
        console.print(f"No image caches in {directory}.")
        return 0
    console.print(_table(entries, directory))
    return 0


def _default_dir() -> Path:
    from trainer.cache import cache_dir  # trainer.cache is light: numpy and joblib

    return cache_dir()


def _table(entries, directory: Path) -> Table:
    table = Table(title=f"Image caches in {directory}")
    # File names stay whole (they are what `rm` or a bug report needs), and sources up to 40
    # characters: on a narrow terminal the other columns wrap first.
    table.add_column("file", min_width=max(len(e.path.name) for e in entries), no_wrap=True)
    table.add_column("kind")
    table.add_column("source", min_width=min(40, max(len(e.source) for e in entries)))
    for column in ("size", "images", "MiB"):
        table.add_column(column, justify="right")
    table.add_column("last use")
    table.add_column("used by")
    for e in entries:
        table.add_row(
            e.path.name,
            e.kind,
            e.source,
            f"{e.size}px" if e.size else "?",
            str(e.images or "?"),
            f"{e.bytes / 2**20:.1f}",
            describe_age(e.last_used),
            ", ".join(e.used_by) or "(none: 'hpo cache clean' removes it)",
        )
    return table
