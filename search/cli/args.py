"""What every ``memekit`` subcommand shares: the parser class, help format and argparse value types."""

from __future__ import annotations

import argparse
from typing import NoReturn

from memekit.analysis.data import DataError, parse_background

ArgumentGroup = argparse._ArgumentGroup  # what add_argument_group returns (argparse names it privately)


def with_default(text: str, default: object) -> str:
    """``TEXT (default: DEFAULT)``: the one way memekit's help states a default, written by
    :class:`HelpFormatter` from an option's default, and by hand where argparse's default is not the
    one that applies (``None`` for "the study's stored value", "the spec's", ...)."""
    return f"{text} (default: {default})"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help with every option's default: ``(default: X)`` after the help text
    (:func:`with_default`), unless the text already says it, the option is a flag or it has no default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_default = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "(default: " in text or no_default or action.required:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return with_default(text, "%(default)s")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (what is wrong and where the help is) with exit code 2, no usage dump;
    the help shows every option's default (:class:`HelpFormatter`)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - argparse's own signature
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's signature
        """Unknown options are an error of the (sub)command that was given them, so the message
        points to that command's help, not to the top-level one."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    """An integer >= 1, or an argparse error naming the bad value."""
    return _int_at_least(text, 1, "a positive integer")


def nonneg_int(text: str) -> int:
    """An integer >= 0, or an argparse error naming the bad value."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0, or an argparse error naming the bad value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def background_colour(text: str) -> tuple[int, int, int]:
    """``--background``: grey, black, white, ``R,G,B`` or ``#RRGGBB``
    (:func:`memekit.analysis.data.parse_background`), or an argparse error with its message."""
    try:
        return parse_background(text)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
