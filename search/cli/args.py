"""Argument types shared by the `hpo` verbs, and the parser that reports their errors.

A bad argument is a user error like any other: one line, ``hpo: error: <what>; <fix>.``, exit
status 2. argparse's usage block stays in ``--help``, where it is asked for.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from trainer.errors import UserError


class ArgumentsError(UserError):
    """A command line that does not parse; the message names the argument and the fix."""


class Parser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors raise `ArgumentsError` instead of exiting.

    Subparsers made with ``add_subparsers().add_parser`` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        """Raise the error as one sentence; add where to look when argparse names no fix."""
        raise ArgumentsError(with_fix(message, self.prog))


def with_fix(message: str, prog: str) -> str:
    """``message`` as one sentence; one without a fix points at ``prog --help``."""
    message = message.rstrip(".")
    return f"{message}." if "; " in message else f"{message}; see `{prog} --help`."


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        shown = text if value is None else value
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {shown}; give 1 or more")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        shown = text if value is None else value
        raise argparse.ArgumentTypeError(
            f"must be a positive number, not {shown}; give a number above 0"
        )
    return value
