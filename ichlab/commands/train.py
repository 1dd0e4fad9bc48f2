"""``ichlab train``: train one path (2D, 2.5D or LSTM) on the prepared data, also under torchrun."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ichlab.commands import HelpFormatter, image_size_int, int_in_range, non_negative_int, odd_positive_int, positive_float, positive_int, report_error, seed_int


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the 2D, 2.5D or LSTM model and write its run folder",
        description=(
            "Prepare the data if needed, train one path with early stopping and write best.pt, "
            "last.pt and history.csv. Settings come from the mode (ICHLAB_MODE); the options "
            "below override them. For several GPUs or machines, start it with torchrun, for "
            "example: torchrun --nproc_per_node=4 -m ichlab.cli train --arch lstm"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--arch", choices=("2d", "2.5d", "lstm"), required=True, help="which path to train")
    parser.add_argument("--mode", choices=("quick", "demo", "full"), default=None, help="settings to start from (default: ICHLAB_MODE, else demo)")
    parser.add_argument("--data", type=Path, default=None, help="an RSNA-layout dataset folder to train on instead of the mode's data")
    parser.add_argument("--run-dir", type=Path, default=None, help="folder for checkpoints and history (default: RUNS/<arch>, with the LSTM options in the name)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="maximum number of epochs")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="samples per batch and process (slices, for series chunks)")
    parser.add_argument("--lr", type=positive_float, default=None, help="peak learning rate of AdamW")
    parser.add_argument("--patience", type=positive_int, default=None, help="epochs without a lower validation loss before stopping")
    parser.add_argument("--image-size", type=image_size_int, default=None, help="pixels per side of the model input (builds a cache of that size)")
    parser.add_argument("--context-slices", type=odd_positive_int, default=None, help="K, odd: slices per 2.5D or LSTM window (3, 5, 7)")
    parser.add_argument("--series-mode", action="store_true", help="LSTM: train on chunks of consecutive slices, embedding each slice once")
    parser.add_argument("--chunk-size", type=int_in_range(1, 512), default=16, help="LSTM series mode: labelled slices per chunk, at most 512; memory grows with it, since short series are padded to it")
    parser.add_argument("--bidirectional", action="store_true", help="LSTM: a bidirectional LSTM (over the whole chunk in series mode)")
    parser.add_argument("--pretrained", action="store_true", help="start from ImageNet weights (hub, --weights or ICHLAB_WEIGHTS)")
    parser.add_argument("--weights", type=Path, default=None, help="local timm ImageNet weights file (.pth or .safetensors); implies --pretrained")
    parser.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default=None, help="training device")
    parser.add_argument("--seed", type=seed_int, default=None, help="seed of the initial weights and the shuffling")
    parser.add_argument("--workers", type=non_negative_int, default=None, help="DataLoader worker processes")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt when it exists")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run)


def default_run_dir(runs_dir: Path, args) -> Path:
    """Return RUNS/<arch>, with the LSTM variant in the name so it never replaces the plain LSTM run."""
    name = args.arch
    if args.arch == "lstm":
        if args.context_slices not in (None, 3):
            name += f"-k{args.context_slices}"
        if args.series_mode:
            name += "-series"
        if args.bidirectional:
            name += "-bidirectional"
    return Path(runs_dir) / name


def run(args) -> int:
    import torch

    from ichlab.config import get_config
    from ichlab.data import prepare_data, with_data_overrides
    from ichlab.distributed import barrier, init_distributed
    from ichlab.models import PretrainedWeightsError, build_model
    from ichlab.pipeline import model_kwargs
    from ichlab.training import make_loaders_for, train

    if args.arch != "lstm" and (args.series_mode or args.bidirectional):
        return report_error(ValueError("--series-mode and --bidirectional apply to --arch lstm only"), args)

    config = get_config(args.mode)
    config = with_data_overrides(
        config,
        root=args.data,
        source="rsna" if args.data is not None else None,
        image_size=args.image_size,
        context_slices=args.context_slices,
        num_workers=args.workers,
    )
    train_changes = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "patience": args.patience,
        "device": args.device,
        "seed": args.seed,
    }
    config.train = dataclasses.replace(config.train, **{key: value for key, value in train_changes.items() if value is not None})
    if args.pretrained or args.weights is not None:
        config.model = dataclasses.replace(config.model, pretrained=True, weights_file=args.weights or config.model.weights_file)
    run_dir = args.run_dir or default_run_dir(config.runs_dir, args)

    group = init_distributed()
    try:
        # One process builds a missing cache; the others open it once it is complete.
        if group.is_main:
            cache = prepare_data(config, progress=not args.no_progress)
        barrier(group)
        if not group.is_main:
            cache = prepare_data(config, progress=False)

        torch.manual_seed(config.train.seed)
        model = build_model(args.arch, **model_kwargs(config), series_mode=args.series_mode, bidirectional=args.bidirectional)
        loaders = make_loaders_for(model, cache, config, chunk_size=args.chunk_size)
        history = train(model, loaders, config, run_dir, resume=args.resume, progress=not args.no_progress)
    except (OSError, ValueError, PretrainedWeightsError) as error:
        return report_error(error, args)
    finally:
        if group.distributed:
            torch.distributed.destroy_process_group()

    if group.is_main:
        columns = ["train_loss", "val_loss", "mean_auc", "mean_f1"]
        print(history.table[columns].to_string(float_format=lambda value: f"{value:.4f}"))
        stopped = " (stopped early)" if history.stopped_early else ""
        print(f"best epoch {history.best_epoch}{stopped}: {Path(run_dir) / 'best.pt'}")
    return 0
