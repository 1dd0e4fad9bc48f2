"""``ichlab scan``: read the headers of a DICOM folder, report each series and the skipped files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ichlab.commands import HelpFormatter, positive_int, report_error

# Skipped files printed one per line; the rest are counted.
MAX_LISTED_SKIPPED = 20


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "scan",
        help="scan DICOM headers and report slice order and spacing per series",
        description=(
            "Read the headers (no pixel data) of every DICOM file under FOLDER in parallel, "
            "order each series along its slice normal, and print per series the slice count, "
            "the spacing along the normal, irregular spacing and duplicate positions, then the "
            "files that were skipped and why."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("folder", type=Path, help="folder searched recursively for DICOM files")
    parser.add_argument("--out", type=Path, default=None, help="CSV file for the ordered header table, one row per slice")
    parser.add_argument("--pattern", default="*.dcm", help='file name pattern; use "*" for files without an extension')
    parser.add_argument("--workers", type=positive_int, default=None, help="worker processes; unset means up to 8, limited by the CPU count")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def _format_runs(runs: list[tuple[float, int]]) -> str:
    return ", ".join(f"{count} x {spacing:g} mm" for spacing, count in runs) or "-"


def run(args) -> int:
    from ichlab.dicom import scan_headers
    from ichlab.series import order_slices, series_report

    scan = scan_headers(args.folder, workers=args.workers, progress=not args.no_progress, pattern=args.pattern)
    headers = scan.headers
    print(f"{len(headers)} CT slices read, {len(scan.skipped)} files skipped, in {args.folder}")

    if len(headers):
        ordered = order_slices(headers)
        report = series_report(ordered)
        print(f"\n{len(report)} series:")
        for series_uid, row in report.iterrows():
            flags = []
            if row["irregular_spacing"]:
                flags.append("irregular spacing")
            if row["n_duplicates"]:
                flags.append(f"{row['n_duplicates']} duplicate positions")
            if row["n_near_duplicates"]:
                flags.append(f"{row['n_near_duplicates']} near-duplicate positions")
            print(f"  {series_uid}: {row['n_slices']} slices, spacing {_format_runs(row['spacing_runs'])}")
            if flags:
                print(f"    warning: {'; '.join(flags)}")
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            ordered.to_csv(args.out, index=False)
            print(f"\nordered header table -> {args.out}")

    if len(scan.skipped):
        print(f"\nskipped {len(scan.skipped)} files:")
        for row in scan.skipped.head(MAX_LISTED_SKIPPED).itertuples():
            print(f"  {row.reason}")
        if len(scan.skipped) > MAX_LISTED_SKIPPED:
            print(f"  ... and {len(scan.skipped) - MAX_LISTED_SKIPPED} more")

    if not len(headers):
        return report_error(ValueError(f"no readable CT slices in {args.folder} match {args.pattern!r}; check the folder and --pattern"), args)
    return 0
