"""``ichlab phantom``: write a generated head-CT dataset in the RSNA layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from ichlab.commands import HelpFormatter, int_in_range, positive_int, report_error, seed_int


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="generate head-CT DICOM series with RSNA-style labels and lesion masks",
        description=(
            "Write one axial head-CT series per patient as DICOM files (stage_2_train/), "
            "RSNA-style labels (stage_2_train.csv), lesion masks (masks/) and the settings "
            "(phantom.json). The data is a teaching phantom, not clinical data."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--patients", type=positive_int, required=True, help="number of patients (one series each)")
    parser.add_argument("--seed", type=seed_int, default=0, help="random seed; the same arguments give identical files")
    parser.add_argument("--size", type=int_in_range(16), default=512, help="pixels per side of a slice without size quirks")
    parser.add_argument(
        "--slices",
        type=positive_int,
        nargs=2,
        default=(20, 40),
        metavar=("MIN", "MAX"),
        help="inclusive range of slices per series (5 mm apart)",
    )
    parser.add_argument(
        "--difficulty",
        choices=("easy", "default", "hard"),
        default="default",
        help="lesion size, blood contrast and noise level",
    )
    parser.add_argument(
        "--quirks",
        nargs="*",
        default=None,
        metavar="NAME",
        help=(
            "add header quirks of real RSNA files at their default rates: all of them when "
            "given without names, or only the named ones"
        ),
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="processes that render and write series in parallel")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ichlab.phantom import generate_dataset
    from ichlab.phantom.quirks import QUIRK_NAMES

    low, high = args.slices
    if low > high:
        return report_error(ValueError(f"--slices {low} {high}: MIN is above MAX; pass the smaller number first"), args)
    quirks = args.quirks
    if quirks is not None:
        unknown = sorted(set(quirks) - set(QUIRK_NAMES))
        if unknown:
            return report_error(ValueError(f"unknown quirk {', '.join(unknown)}; choose from {', '.join(QUIRK_NAMES)}"), args)
        quirks = list(quirks) if quirks else True

    root = generate_dataset(
        args.out,
        args.patients,
        seed=args.seed,
        image_size=args.size,
        slices_per_series=tuple(args.slices),
        difficulty=args.difficulty,
        quirks=quirks,
        progress=not args.no_progress,
        workers=args.workers,
    )
    print(f"generated dataset in {root}")
    print("This is a teaching phantom: results on it say nothing about clinical performance.")
    return 0
