"""``ichlab reproduce``: the whole course experiment in one run."""

from __future__ import annotations

from pathlib import Path

from ichlab.commands import image_size_int, non_negative_int, positive_int, report_error, seed_int
from ichlab.config import MODES


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="generate data, train the 2D, 2.5D and LSTM paths, evaluate and explain them",
        description=(
            "Run the course experiment end to end and write a run folder: the per-class F1 table "
            "(CSV and Markdown) with patient-bootstrap intervals, per-image predictions, the Grad-CAM "
            "subtype figure and scores, the configuration, checkpoints and a log. Without --data it "
            "runs on the generated head-CT dataset."
        ),
    )
    parser.add_argument("--mode", choices=MODES, default=None, help="quick, demo or full (default: ICHLAB_MODE, else demo)")
    parser.add_argument("--data", type=Path, default=None, help="an RSNA-layout folder (stage_2_train/ and stage_2_train.csv) to use instead of generated data")
    parser.add_argument("--out", type=Path, default=None, help="run folder to write (default: runs/<mode>-seed<seed>)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the data generator, the split and training (default: 0)")
    parser.add_argument("--archs", nargs="+", choices=("2d", "2.5d", "lstm"), default=["2d", "2.5d", "lstm"], help="paths to train (default: all three)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the mode's number of training epochs")
    parser.add_argument("--patients", type=positive_int, default=None, help="override the mode's number of generated patients")
    parser.add_argument("--image-size", type=image_size_int, default=None, help="override the mode's model input size in pixels")
    parser.add_argument("--bootstrap", type=non_negative_int, default=1000, help="patient-bootstrap replicates for the confidence intervals (default: 1000)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars (for logs)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ichlab import pipeline
    from ichlab.config import get_config
    from ichlab.data import with_data_overrides

    config = get_config(args.mode)
    config.train.seed = args.seed
    if args.epochs is not None:
        config.train.epochs = args.epochs
    if args.data is not None:
        if not args.data.is_dir():
            return report_error(ValueError(f"--data {args.data} is not a folder; pass the folder that contains stage_2_train/"), args)
        from ichlab.rsna import find_layout

        find_layout(args.data)  # raises before any run folder is written when the layout is wrong
    # Settings other than the mode's get their own data and cache folders.
    config = with_data_overrides(
        config,
        source="rsna" if args.data is not None else None,
        root=args.data.resolve() if args.data is not None else None,
        seed=args.seed,
        n_patients=args.patients,
        image_size=args.image_size,
    )

    out_dir = args.out or Path("runs") / f"{config.mode}-seed{args.seed}"
    print(f"ichlab reproduce: {config.mode} mode, {config.data.source} data, writing {out_dir}")
    pipeline.reproduce(config, out_dir, archs=tuple(args.archs), n_bootstrap=args.bootstrap, progress=not args.no_progress)
    print((out_dir / "f1_table.md").read_text())
    print(f"report: {out_dir / 'report.md'}")
    if config.data.source == "generated":
        print("These models learned from a generated teaching phantom; their numbers say nothing clinical.")
    return 0
