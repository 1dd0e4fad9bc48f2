"""``ichlab bench``: measure the three paths' training and inference speed on this machine.

It reports training samples per second of each path (2D, 2.5D, LSTM per window, LSTM in
series mode) at each image size. It compares the compute per labelled slice of each path
with 2D, as forward FLOPs counted by ``torch.utils.flop_counter`` and as measured time from
the same run. It also times the prediction of a whole series of 40 slices. A student can run it to
see what their own GPU or laptop gives. The inputs are random tensors, so no data is needed.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ichlab.commands import HelpFormatter, non_negative_int, positive_int, report_error

logger = logging.getLogger(__name__)

# Path name, build_model arguments, and how one batch is shaped.
PATHS = {
    "2d": {"arch": "2d"},
    "2.5d": {"arch": "2.5d"},
    "lstm": {"arch": "lstm"},
    "lstm series": {"arch": "lstm", "series_mode": True},
}


@dataclass
class BenchSettings:
    """Benchmark settings: image sizes, batch size in labelled slices, timed steps, and the device."""

    sizes: tuple[int, ...] = (128, 224)
    batch_size: int = 16
    steps: int = 3
    warmup_steps: int = 1
    series_slices: int = 40
    device: str = "auto"
    amp: bool = True


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure training and inference speed of the three paths on this machine",
        description=(
            "Train each path for a few steps on random inputs and report samples per second at "
            "each image size, the LSTM's compute per labelled slice relative to 2D with and "
            "without series mode, and the time to predict a whole series."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[128, 224], help="image sizes in pixels per side")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="labelled slices per training batch (one chunk in series mode)")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed training steps per path and size")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=1, help="untimed steps before timing")
    parser.add_argument("--series-slices", type=positive_int, default=40, help="slices of the series predicted whole")
    parser.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto", help="device to measure")
    parser.add_argument("--no-amp", action="store_true", help="measure CUDA in float32 instead of mixed precision")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the tables as CSV files with this path prefix")
    parser.set_defaults(run=run)


def batch_for(path: str, size: int, batch_size: int, context_slices: int = 3) -> tuple[torch.Tensor, int]:
    """Return a random input batch for ``path`` and the number of labelled slices it holds."""
    if path == "2d":
        return torch.rand(batch_size, 3, size, size), batch_size  # (B, 3, H, W)
    if path == "2.5d":
        return torch.rand(batch_size, 3 * context_slices, size, size), batch_size  # (B, 3K, H, W)
    if path == "lstm":
        return torch.rand(batch_size, context_slices, 3, size, size), batch_size  # (B, K, 3, H, W)
    chunk = batch_size + context_slices - 1  # one chunk: the labelled slices and K // 2 context at each end
    return torch.rand(1, chunk, 3, size, size), batch_size  # (1, N, 3, H, W)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model, optimizer, scaler, images, amp_dtype, device) -> None:
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(images)  # (B, 5) or (1, M, 5)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits, dtype=torch.float32))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def measure_training(path: str, size: int, settings: BenchSettings, device: torch.device) -> dict:
    """Train ``path`` for a few steps at ``size`` px; return samples/s, seconds and forward FLOPs per labelled slice."""
    from torch.utils.flop_counter import FlopCounterMode

    from ichlab.models import build_model
    from ichlab.optimization import autocast_dtype

    torch.manual_seed(0)
    model = build_model(**PATHS[path]).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp_dtype = autocast_dtype(device, settings.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    images, labelled = batch_for(path, size, settings.batch_size)
    images = images.to(device)
    if images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)

    # Forward FLOPs only: timm 1.0 and torch 2.14 count depthwise-convolution backward passes
    # inconsistently, and the backward pass costs about twice the forward one on every path.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    for _ in range(settings.warmup_steps):
        training_step(model, optimizer, scaler, images, amp_dtype, device)

    synchronize(device)
    started = time.perf_counter()
    for _ in range(settings.steps):
        training_step(model, optimizer, scaler, images, amp_dtype, device)
    synchronize(device)
    seconds = (time.perf_counter() - started) / settings.steps
    return {
        "path": path,
        "image_size": size,
        "samples_per_second": labelled / seconds,
        "seconds_per_labelled_slice": seconds / labelled,
        "forward_gflops_per_labelled_slice": counter.get_total_flops() / labelled / 1e9,
    }


def measure_series_inference(path: str, size: int, settings: BenchSettings, device: torch.device) -> dict:
    """Time the prediction of every slice of one series of ``settings.series_slices`` slices."""
    from ichlab.models import build_model
    from ichlab.models.stem import stack_slices
    from ichlab.optimization import autocast_dtype

    torch.manual_seed(0)
    model = build_model(**PATHS[path]).to(device).to(memory_format=torch.channels_last).eval()
    amp_dtype = autocast_dtype(device, settings.amp)
    n_slices = settings.series_slices
    series = torch.rand(n_slices, 3, size, size, device=device)  # (N, 3, H, W)
    neighbours = torch.stack(
        [torch.arange(n_slices) - 1, torch.arange(n_slices), torch.arange(n_slices) + 1], dim=1
    ).clamp(0, n_slices - 1)  # (N, 3): clipped to the series

    def predict_series() -> torch.Tensor:
        if path == "2d":
            return model(series.contiguous(memory_format=torch.channels_last))
        if path == "2.5d":
            return model(stack_slices(series[neighbours]).contiguous(memory_format=torch.channels_last))
        if path == "lstm":
            return model(series[neighbours])  # (N, 3, 3, H, W): every slice embedded three times
        return model.forward_series(series, all_slices=True)  # every slice embedded once

    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        predict_series()
        synchronize(device)
        started = time.perf_counter()
        logits = predict_series()
        synchronize(device)
        seconds = time.perf_counter() - started
    if logits.shape != (n_slices, 5):
        raise RuntimeError(f"{path}: expected logits of shape ({n_slices}, 5), got {tuple(logits.shape)}")
    return {"path": path, "image_size": size, "series_slices": n_slices, "seconds": seconds}


def run_benchmarks(settings: BenchSettings, *, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Run every measurement and return the tables ``training``, ``lstm_cost`` and ``series_inference``."""
    from tqdm.auto import tqdm

    from ichlab.training import select_device

    device = select_device(settings.device)
    jobs = [(path, size) for size in settings.sizes for path in PATHS]
    training_rows, inference_rows = [], []
    for path, size in tqdm(jobs, desc="bench", disable=not progress):
        logger.info("measuring %s at %d px on %s", path, size, device)
        training_rows.append(measure_training(path, size, settings, device))
        inference_rows.append(measure_series_inference(path, size, settings, device))

    training = pd.DataFrame(training_rows)
    lstm_cost = []
    for size, rows in training.groupby("image_size"):
        rows = rows.set_index("path")
        for path in ("2.5d", "lstm", "lstm series"):
            lstm_cost.append(
                {
                    "path": path,
                    "image_size": size,
                    "flops_vs_2d": rows.loc[path, "forward_gflops_per_labelled_slice"] / rows.loc["2d", "forward_gflops_per_labelled_slice"],
                    "time_vs_2d": rows.loc[path, "seconds_per_labelled_slice"] / rows.loc["2d", "seconds_per_labelled_slice"],
                }
            )
    return {
        "training": training,
        "lstm_cost": pd.DataFrame(lstm_cost),
        "series_inference": pd.DataFrame(inference_rows),
    }


def describe_machine(device: torch.device) -> str:
    """Return a one-line description of the measured device and torch's thread count."""
    from ichlab.course import describe_device

    return f"{describe_device() if device.type != 'cpu' else 'CPU'}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def run(args) -> int:
    from ichlab.training import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchSettings(
        sizes=tuple(args.sizes),
        batch_size=args.batch_size,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        series_slices=args.series_slices,
        device=args.device,
        amp=not args.no_amp,
    )
    try:
        device = select_device(settings.device)
    except ValueError as error:
        return report_error(error, args)

    tables = run_benchmarks(settings)
    precision = "mixed precision" if device.type == "cuda" and settings.amp else "float32"
    print(f"device: {describe_machine(device)}; {precision}; batch {settings.batch_size} labelled slices")
    print("\ntraining throughput (labelled slices per second; LSTM series: one chunk of the batch size plus 2 context slices)")
    print(tables["training"].to_string(index=False, float_format=lambda value: f"{value:.3g}"))
    print("\ncompute per labelled slice relative to 2D (same run)")
    print(tables["lstm_cost"].to_string(index=False, float_format=lambda value: f"{value:.2f}"))
    print(f"\nwhole-series inference ({settings.series_slices} slices, every slice predicted)")
    print(tables["series_inference"].to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    if args.out:
        for name, table in tables.items():
            table.to_csv(f"{args.out}_{name}.csv", index=False)
    return 0
