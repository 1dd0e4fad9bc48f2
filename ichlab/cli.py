"""The ``ichlab`` console command: one subcommand per course step, and ``reproduce`` for all of them.

Each subcommand lives in ``ichlab.commands.<name>`` with ``add_parser(subparsers)`` and
``run(args) -> int``; this module only assembles them, so ``ichlab --help`` stays the index.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ichlab import __version__
from ichlab.commands import report_error

# Subcommands in the order a student meets them.
COMMANDS = (
    "reproduce",
    "phantom",
    "scan",
    "prepare",
    "train",
    "predict",
    "bench",
    "grade",
    "course",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="ichlab",
        description=(
            "Intracranial hemorrhage detection on head-CT DICOM series: generate data, "
            "train the 2D, 2.5D and LSTM models, evaluate them and explain them with Grad-CAM."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ichlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"ichlab.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``ichlab`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (OSError, ValueError) as error:
        # A missing file, an unreadable DICOM or invalid labels is the user's to fix: print the
        # message alone, and the traceback only with --verbose.
        return report_error(error, args)


if __name__ == "__main__":
    sys.exit(main())
