"""``ichlab prepare``: build the patient subset, the split and the slice cache for training."""

from __future__ import annotations

from pathlib import Path

from ichlab.commands import image_size_int, non_negative_int, positive_int, report_error, seed_int


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="build the patient split and the int16 slice cache from generated or RSNA data",
        description=(
            "Scan the DICOM headers, order the slices, join the labels, take a stratified "
            "patient subset (RSNA data), split train/val/test by patient and cache the "
            "slices as int16 HU arrays. Settings come from the mode (ICHLAB_MODE); the "
            "options below override them. An interrupted run resumes where it stopped, and "
            "a cache built with the same settings is reused."
        ),
    )
    parser.add_argument("--mode", choices=("quick", "demo", "full"), default=None, help="settings to start from (default: ICHLAB_MODE, else demo)")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder: the Kaggle RSNA download (stage_2_train/, stage_2_train.csv) or a generated one")
    parser.add_argument("--source", choices=("generated", "rsna"), default=None, help="kind of data in --data (default: rsna when --data is given, else the mode's)")
    parser.add_argument("--subset", type=positive_int, default=None, metavar="N", help="number of patients to keep (RSNA) or to generate")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder to write (default: the mode's cache folder)")
    parser.add_argument("--image-size", type=image_size_int, default=None, help="pixels per side of cached slices")
    parser.add_argument("--seed", type=seed_int, default=None, help="seed of the subset and the split")
    parser.add_argument("--workers", type=non_negative_int, default=None, help="processes decoding DICOM (default: the mode's num_workers)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ichlab import rsna
    from ichlab.config import get_config
    from ichlab.data import prepare_data, with_data_overrides

    config = get_config(args.mode)
    source = args.source or ("rsna" if args.data is not None else None)
    if source == "rsna" and args.data is None and config.data.source != "rsna":
        # Without this check the mode's generated folder would be read as if it were RSNA data.
        return report_error(ValueError("--source rsna needs --data FOLDER (the Kaggle download), or ICHLAB_MODE=full with ICHLAB_RSNA_ROOT set"), args)
    config = with_data_overrides(
        config,
        root=args.data,
        source=source,
        n_patients=args.subset,
        cache_dir=args.cache,
        image_size=args.image_size,
        seed=args.seed,
    )
    try:
        cache = prepare_data(config, progress=not args.no_progress, num_workers=args.workers)
    except (OSError, ValueError) as error:
        return report_error(error, args)

    hu_bytes = cache.hu.nbytes + (cache.masks.nbytes if cache.masks is not None else 0)
    print(f"cache: {cache.path} ({hu_bytes / 2**30:.2f} GiB, {cache.image_size} px)")
    print(f"subset: {rsna.format_slice_counts(cache.index)}")
    print(f"reference subset: {rsna.REFERENCE_SUBSET['patients']} patients, {rsna.REFERENCE_SUBSET['slices']:,} slices: "
          + ", ".join(f"{name} {count}" for name, count in rsna.REFERENCE_SLICE_COUNTS.items()))
    print(cache.summary().to_string())
    if len(cache.skipped):
        print(f"skipped {len(cache.skipped)} file(s); reasons in {cache.path / 'skipped.csv'}")
    return 0
