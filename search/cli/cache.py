"""`hpo cache` lists the decoded-image caches and the backbone feature caches computed from
them; `hpo cache clean` removes those no study uses."""

from __future__ import annotations

import argparse
import io
import textwrap
from pathlib import Path

from rich.console import Console
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
    for source in (40, 20, 10):  # sources wrap narrower before the table is cut
        table = _table(entries, directory, source)
        if _fits(table, console.width):
            console.print(table)
            return 0
    _blocks(console, entries, directory)  # no table fits: one block per cache
    return 0


def _fits(table: Table, width: int) -> bool:
    """Whether ``table`` prints whole in ``width`` columns (Rich cuts off what does not fit)."""
    probe = Console(width=width, file=io.StringIO(), color_system=None)
    with probe.capture() as captured:
        probe.print(table)
    assert table.box is not None
    top = next(line for line in captured.get().splitlines() if table.box.top_left in line)
    return top.rstrip().endswith(table.box.top_right)


def _blocks(console: Console, entries, directory: Path) -> None:
    """The caches as a few wrapped lines each, for a terminal too narrow for the table."""
    console.print(f"Image caches in {directory}", markup=False, highlight=False)
    for e in entries:
        console.print(e.path.name, markup=False, highlight=False, soft_wrap=True)
        _, kind, source, size, images, mib, age, users = _cells(e)
        about = (
            f"{kind} of {source}; {size}; {images} images; {mib} MiB; last used {age}; "
            f"used by {users}"
        )
        wrapped = textwrap.fill(about, console.width, initial_indent="  ", subsequent_indent="  ")
        console.print(wrapped, markup=False, highlight=False)


def _default_dir() -> Path:
    from trainer.cache import cache_dir  # trainer.cache is light: numpy and joblib

    return cache_dir()


def _table(entries, directory: Path, source: int) -> Table:
    """The caches as a table: file names whole (what `rm` or a bug report needs), sources
    folded at ``source`` characters."""
    table = Table(title=f"Image caches in {directory}")
    name = max(len(e.path.name) for e in entries)
    table.add_column("file", min_width=name, no_wrap=True)
    table.add_column("kind")
    longest = max(len(e.source) for e in entries)
    table.add_column("source", min_width=min(source, longest), max_width=source, overflow="fold")
    for column in ("size", "images", "MiB"):
        table.add_column(column, justify="right")
    table.add_column("last use")
    table.add_column("used by")
    for e in entries:
        table.add_row(*_cells(e))
    return table


def _cells(e) -> list[str]:
    """One cache's file, kind, source, size, images, MiB, last use and users."""
    return [
        e.path.name,
        e.kind,
        e.source,
        f"{e.size}px" if e.size else "?",
        str(e.images or "?"),
        f"{e.bytes / 2**20:.1f}",
        describe_age(e.last_used),
        ", ".join(e.used_by) or "(none: 'hpo cache clean' removes it)",
    ]
