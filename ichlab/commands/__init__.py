"""The subcommands of the ``ichlab`` command, one module each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help formatter that appends an option's default, except where the default carries no information.

    Flags (default False), options whose default None means "from the mode or the data", and
    help texts that state their default themselves are left as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool) or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _integer(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; pass {expected}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is invalid; pass {expected}")
    return value


def positive_int(text: str) -> int:
    """Parse an option value of 1 or more (an argparse ``type``)."""
    return _integer(text, 1, "1 or more")


def non_negative_int(text: str) -> int:
    """Parse an option value of 0 or more (an argparse ``type``)."""
    return _integer(text, 0, "0 or more")


def odd_positive_int(text: str) -> int:
    """Parse an odd option value of 1 or more, such as the slices of a context window (an argparse ``type``)."""
    value = _integer(text, 1, "an odd number such as 3, 5 or 7")
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{value} is even; pass an odd number such as 3, 5 or 7")
    return value


def report_error(error: BaseException, args: argparse.Namespace, status: int = 2) -> int:
    """Print a user's error as ``error: ...`` on stderr and return ``status``.

    Under ``ichlab -v`` the error is raised again, so that its traceback shows.
    """
    if getattr(args, "verbose", False):
        raise error
    print(f"error: {error}", file=sys.stderr)
    return status
