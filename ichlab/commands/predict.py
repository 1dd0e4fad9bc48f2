"""``ichlab predict``: per-slice probabilities and a Grad-CAM overlay for an unseen series."""

from __future__ import annotations

from pathlib import Path

from ichlab import SUBTYPES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="run a trained model on a DICOM series folder",
        description=(
            "Order the series along the slice normal, predict the five subtypes for every slice "
            "(CSV in spatial order) and save a Grad-CAM overlay of the most likely slice."
        ),
    )
    parser.add_argument("series_dir", type=Path, help="folder with the DICOM files of one series")
    parser.add_argument("--run", dest="run_dir", type=Path, required=True, help="run folder written by `ichlab reproduce`")
    parser.add_argument("--model", choices=("2d", "2.5d", "lstm"), default="lstm", help="which trained path to use (default: lstm)")
    parser.add_argument("--subtype", choices=SUBTYPES, default=None, help="subtype to explain (default: the most likely one)")
    parser.add_argument("--pattern", default="*.dcm", help='file name pattern in the folder; use "*" for files without an extension (default: *.dcm)')
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/predict/<series folder name>-<end of the SeriesInstanceUID>)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ichlab.inference import PHANTOM_NOTICE, predict_series

    result = predict_series(args.series_dir, args.run_dir, arch=args.model, subtype=args.subtype, out_dir=args.out, pattern=args.pattern)
    print(f"{len(result.table)} slices in spatial order -> {result.csv_path}")
    if result.n_skipped:
        print(f"skipped {result.n_skipped} unreadable files (listed in the log above)")
    print(f"Grad-CAM for {result.subtype} on slice {result.slice_index} -> {result.overlay_path}")
    print(PHANTOM_NOTICE)
    return 0
