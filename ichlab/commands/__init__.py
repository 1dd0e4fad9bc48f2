"""The subcommands of the ``ichlab`` command, one module each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import math
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


def _integer(text: str, minimum: int, maximum: int | None, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; pass {expected}") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise argparse.ArgumentTypeError(f"{value} is invalid; pass {expected}")
    return value


def int_in_range(minimum: int, maximum: int | None = None):
    """Return an argparse ``type`` that accepts whole numbers from ``minimum`` to ``maximum``."""
    expected = f"{minimum} or more" if maximum is None else f"a number from {minimum} to {maximum}"

    def parse(text: str) -> int:
        return _integer(text, minimum, maximum, expected)

    return parse


positive_int = int_in_range(1)
non_negative_int = int_in_range(0)
# Seeds reach numpy, which accepts 0 to 2**32 - 1.
seed_int = int_in_range(0, 2**32 - 1)
# Model input sizes: the phantom generator needs 16 px, and 1024 px is twice an RSNA slice.
image_size_int = int_in_range(16, 1024)


def odd_positive_int(text: str) -> int:
    """Parse an odd option value of 1 or more, such as the slices of a context window (an argparse ``type``)."""
    value = _integer(text, 1, None, "an odd number such as 3, 5 or 7")
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{value} is even; pass an odd number such as 3, 5 or 7")
    return value


def positive_float(text: str) -> float:
    """Parse a finite option value above 0, such as a learning rate (an argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; pass a positive number such as 3e-4") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid; pass a positive number such as 3e-4")
    return value


def report_error(error: BaseException, args: argparse.Namespace, status: int = 2) -> int:
    """Print a user's error as ``error: ...`` on stderr and return ``status``.

    Under ``ichlab -v`` the error is raised again, so that its traceback shows.
    """
    if getattr(args, "verbose", False):
        raise error
    print(f"error: {error}", file=sys.stderr)
    return status
