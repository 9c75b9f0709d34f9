"""Argument parsing shared by the magics: one-sentence usage errors, ``#`` comments allowed."""

from __future__ import annotations

import argparse
import shlex
from typing import Any, NoReturn

from IPython.core.error import UsageError

__all__ = ["MagicArgs", "parse_line", "words"]


class MagicArgs(argparse.ArgumentParser):
    """argparse for a magic: errors become one UsageError sentence, never an exit."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        super().__init__(prog=prog, add_help=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        usage = self.format_usage().strip().removeprefix("usage: ")
        raise UsageError(f"%{self.prog}: {message}; usage: %{usage}")


def words(line: str, prog: str) -> list[str]:
    """Shell-like words of a magic line; a ``#`` starts a comment, as in the rest of the cell."""
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:
        raise UsageError(f"%{prog}: {exc}") from None


def parse_line(parser: argparse.ArgumentParser, line: str) -> argparse.Namespace:
    return parser.parse_args(words(line, parser.prog))
