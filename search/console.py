"""Where `hpo` prints its tables and notes: one Rich console, as wide as its reader can see."""

from __future__ import annotations

import os

from rich.console import Console


def make_console(*, stderr: bool = True) -> Console:
    """A console for tables: a terminal's width, else ``$COLUMNS``, else 160 columns for logs."""
    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return console  # Rich reads COLUMNS itself
    return Console(stderr=stderr, width=160)
