"""Argument parsing for ``runtime``: messages a person can act on.

:class:`Parser` is :class:`argparse.ArgumentParser` with "did you mean" for misspelled flags and
subcommands (Python 3.14's ``suggest_on_error``, for the Pythons we support), and the value types
here say what was wrong with a value in words ("invalid port 'abc'"), not with a function's name.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Sequence
from typing import NoReturn

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
USAGE_LINES = 6  # a longer usage is left to --help when a usage mistake is reported


def suggest(word: str, candidates: Sequence[str]) -> str:
    """``" (did you mean --model-dir?)"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose "unrecognized arguments" and "invalid choice" errors suggest the closest name."""

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # The subcommand's parser knows the flags the user meant; the top-level one knows only its own.
            parser = self._innermost(parsed)
            flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
            hints = "".join(suggest(extra.split("=", 1)[0], flags) for extra in extras if extra.startswith("-"))
            parser.error(f"unrecognized arguments: {' '.join(extras)}{hints}")
        return parsed

    def _innermost(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self
        while True:
            sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            chosen = getattr(parsed, sub.dest, None) if sub is not None and sub.dest else None
            if sub is None or chosen not in sub.choices:
                return parser
            parser = sub.choices[chosen]

    def error(self, message: str) -> NoReturn:
        # argparse words a bad choice as "invalid choice: 'tirton' (choose from ...)"; add the likely one.
        if "invalid choice: '" in message:
            word = message.split("invalid choice: '", 1)[1].split("'", 1)[0]
            choices = [c.strip(" '") for c in message.rsplit("(choose from", 1)[-1].rstrip(")").split(",")]
            message += suggest(word, choices)
        usage = self.format_usage()
        if usage.count("\n") > USAGE_LINES:
            # runtime serve's usage is 25 lines of flags: the one line that says what was wrong would scroll by.
            usage = f"usage: {self.prog} [options] ({self.prog} --help lists them)\n"
        self.exit(2, f"{usage}{self.prog}: error: {message}\n")


def _integer(value: str, low: int, high: int | None, message: Callable[[str], str]) -> int:
    """``value`` as an integer in [low, high]; ``message`` says what was wanted (repr for non-numbers)."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(message(repr(value))) from None
    if number < low or (high is not None and number > high):
        raise argparse.ArgumentTypeError(message(value))
    return number


def positive(value: str) -> int:
    return _integer(value, 1, None, lambda got: f"must be a positive integer, got {got}")


def non_negative(value: str) -> int:
    return _integer(value, 0, None, lambda got: f"must be 0 or a positive integer, got {got}")


def port(value: str) -> int:
    return _integer(value, 0, 65535, lambda got: f"invalid port {got}: give a number from 0 to 65535")


def log_level(value: str) -> str:
    """A logging level name, in any case (what logging.basicConfig and Gunicorn's loglevel both take)."""
    level = value.strip().upper()
    if level in LOG_LEVELS:
        return level
    raise argparse.ArgumentTypeError(f"invalid log level {value!r}: choose from {', '.join(LOG_LEVELS)}")


def check_log_level(value: str, source: str) -> str | None:
    """The problem with a log level from ``source`` (an environment variable), or None."""
    try:
        log_level(value)
    except argparse.ArgumentTypeError as ex:
        return f"{source}: {ex}"
    return None
