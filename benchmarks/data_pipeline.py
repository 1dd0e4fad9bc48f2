"""Measure the data pipeline: cache build speed, loader throughput against naive DICOM reading, memory.

Run from the repository root::

    .venv/bin/python benchmarks/data_pipeline.py

It generates a phantom dataset of 512 x 512 DICOM slices in a temporary folder (or uses
``--data``), builds the int16 cache at ``--image-size``, then times DataLoaders over the train
split, each with ``--workers`` worker processes and again in-process (``num_workers=0``):

- ``naive 2.5D``: reads, converts to HU, resizes and windows three DICOM files per item;
- ``copy limit 2.5D``: copies the item's three int16 slices out of the memory map and nothing
  else, the most a loader over this cache can deliver;
- ``cache 2.5D``: what ``make_loaders`` builds, int16 HU items, with ``window_batch``
  windowing each batch on the device as the training loop does;
- ``cache 2.5D windowed in workers``: ``window_on_device=False``, float32 items;
- ``cache 2D``, ``cache sequence``, ``cache 2.5D + augment`` on the ``make_loaders`` path.

Every loader row ends in the model's input: windowed float32 batches on ``--device`` (the CPU
by default, in the main process). The copy limit ends in int16, the bytes it copies. Ratios
are taken within one run. With ``--device cuda`` batches are pinned, copied to the GPU and
windowed there, as in full-mode training.

Memory is read from ``/proc/<pid>/smaps_rollup`` (Linux) for the main process and its
workers after a full pass: anonymous memory (heap, tensors) separately from resident pages of
the memory-mapped cache, which belong to the page cache and are not a leak. A cache tiled to
four times as many rows shows whether anonymous memory grows with the dataset size.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ichlab.cache import SliceCache, build_cache
from ichlab.datasets import SliceDataset, random_affine_matrices, warp, window_batch
from ichlab.dicom import load_hu, scan_headers
from ichlab.geometry import to_square
from ichlab.phantom import generate_dataset
from ichlab.rsna import attach_labels, find_layout, read_labels
from ichlab.series import neighbour_indices, order_slices
from ichlab.splits import split_patients
from ichlab.windows import stack_windows


class NaiveDicomDataset(Dataset):
    """The baseline: per item, read three DICOM files, convert to HU, resize and window them."""

    def __init__(self, table, image_size):
        self.files = table["file"].tolist()
        self.image_size = image_size
        self.neighbours = np.empty((len(table), 3), dtype=np.int64)
        for _, rows in table.groupby("series_uid", sort=False).indices.items():
            rows = np.sort(rows)
            self.neighbours[rows] = rows[neighbour_indices(len(rows), 3)]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        slices = [to_square(load_hu(self.files[row], warn_missing_rescale=False), self.image_size) for row in self.neighbours[i]]
        hu = torch.from_numpy(np.stack(slices))  # (3, H, W)
        return {"image": stack_windows(hu).flatten(0, 1)}  # (9, H, W)


class CopyLimitDataset(Dataset):
    """The limit: copy the 2.5D item's three int16 slices out of the memory map, nothing more."""

    def __init__(self, cache, split):
        self.cache = cache
        self.rows = cache.rows(split)
        self.neighbours = cache.neighbour_rows(3)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"image": torch.from_numpy(np.asarray(self.cache.hu[self.neighbours[self.rows[i]]]))}  # (3, H, W)


def samples_per_second(dataset, workers, batch_size, n_samples, window_as=None, device=torch.device("cpu")):
    """Return samples per second of a shuffled DataLoader whose batches end on ``device``.

    ``window_as`` windows int16 batches there, as the training loop does.
    """
    on_gpu = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0, pin_memory=on_gpu)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    seen, started = 0, time.perf_counter()
    while seen < n_samples:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        image = batch["image"].to(device, non_blocking=True)
        if window_as is not None:
            image = window_batch(image, window_as)
        seen += len(image)
    if on_gpu:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    memory = memory_of_loader(loader, iterator)
    del iterator, loader
    return seen / elapsed, memory


def smaps(pid):
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1]) / 1024  # MiB
    return values


def cache_map_rss(pid):
    """Resident MiB of the mapped ``hu.npy`` in one process (page cache, shared between processes)."""
    total, in_cache_map = 0.0, False
    with open(f"/proc/{pid}/smaps") as handle:
        for line in handle:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                in_cache_map = line.rstrip().endswith("hu.npy")
            elif in_cache_map and first == "Rss:":
                total += int(line.split()[1]) / 1024
    return total


def memory_of_loader(loader, iterator):
    workers = [worker.pid for worker in getattr(iterator, "_workers", [])]
    # Hand free heap pages back to the system first, so that the main process's anonymous
    # memory counts what is in use, not what glibc keeps for later allocations.
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {
        "main_anonymous_mib": smaps(os.getpid()).get("Anonymous", 0),
        # Pages a worker wrote itself (its heap and batches), not those shared with the main process.
        "worker_private_mib": sum(smaps(pid).get("Private_Dirty", 0) for pid in workers),
        "cache_rss_mib": sum(cache_map_rss(pid) for pid in [os.getpid(), *workers]),
    }


def tiled_cache(cache, folder, copies):
    """Write a cache with ``copies`` times the rows (ids suffixed) to test memory against size."""
    folder.mkdir(parents=True)
    hu = np.lib.format.open_memmap(folder / "hu.npy", mode="w+", dtype=np.int16, shape=(len(cache) * copies, *cache.hu.shape[1:]))
    index = []
    for copy in range(copies):
        hu[copy * len(cache) : (copy + 1) * len(cache)] = cache.hu
        part = cache.index.copy()
        for column in ("image_id", "patient_id", "series_uid"):
            part[column] = part[column] + f"-{copy}"
        index.append(part)
    hu.flush()
    import pandas as pd

    pd.concat(index).to_csv(folder / "index.csv", index=False)
    shutil.copy(cache.path / "skipped.csv", folder / "skipped.csv")
    manifest = {**cache.settings, "n_slices": len(cache) * copies}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return SliceCache.open(folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a Kaggle-layout folder to use instead of a generated one")
    parser.add_argument("--patients", type=int, default=8, help="generated patients")
    parser.add_argument("--phantom-size", type=int, default=512, help="pixels per side of generated DICOM slices")
    parser.add_argument("--image-size", type=int, default=224, help="pixels per side of cached slices")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples", type=int, default=1600, help="samples timed per cache loader")
    parser.add_argument("--naive-samples", type=int, default=320, help="samples timed for the naive loader")
    # NOTE: the cuda path (pinned memory, windowing on the GPU) has never run on a GPU.
    parser.add_argument("--device", default="cpu", help="where batches end and int16 batches are windowed: cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch finds no CUDA GPU here; run with --device cpu")
    main_threads = torch.get_num_threads()
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="ichlab-bench-"))
    try:
        root = args.data
        if root is None:
            root = generate_dataset(work / "data", args.patients, 0, image_size=args.phantom_size, slices_per_series=(24, 28), progress=False)
        dicom_dir, labels_csv = find_layout(root)
        scan = scan_headers(dicom_dir, progress=False)
        table, _ = attach_labels(order_slices(scan.headers), read_labels(labels_csv))
        table["split"] = table["patient_id"].map(split_patients(table, (0.8, 0.1, 0.1)))
        print(f"data: {len(table)} slices of {scan.headers['rows'].iloc[0]} px, {table['patient_id'].nunique()} patients")

        started = time.perf_counter()
        cache = build_cache(table, work / "cache", args.image_size, progress=False)
        build_rate = len(cache) / (time.perf_counter() - started)
        shutil.rmtree(work / "cache")
        started = time.perf_counter()
        cache = build_cache(table, work / "cache", args.image_size, num_workers=args.workers, progress=False)
        build_rate_workers = len(cache) / (time.perf_counter() - started)
        print(f"cache build: {build_rate:.0f} slices/s in one process, {build_rate_workers:.0f} slices/s with {args.workers} processes")

        train = table[table["split"] == "train"].reset_index(drop=True)
        rates, memory = {}, {}

        def measure(name, dataset, n_samples, window_as=None):
            for workers, label in ((args.workers, name), (0, f"in-process: {name}")):
                # Worker rows keep the main process to one thread, because each worker uses one.
                # In-process rows use every core, as a training loop without workers would.
                torch.set_num_threads(1 if workers else main_threads)
                rates[label], memory[label] = samples_per_second(dataset, workers, args.batch_size, n_samples, window_as, device)
            torch.set_num_threads(1)

        measure("naive 2.5D", NaiveDicomDataset(train, args.image_size), args.naive_samples)
        measure("copy limit 2.5D", CopyLimitDataset(cache, "train"), args.samples)
        measure("cache 2.5D", SliceDataset(cache, "train", "2.5d", window_on_device=True), args.samples, "2.5d")
        measure("cache 2.5D windowed in workers", SliceDataset(cache, "train", "2.5d"), args.samples)
        for kind, name in (("2d", "cache 2D"), ("sequence", "cache sequence")):
            rates[name], memory[name] = samples_per_second(
                SliceDataset(cache, "train", kind, window_on_device=True), args.workers, args.batch_size, args.samples, kind, device
            )
        rates["cache 2.5D + augment"], memory["cache 2.5D + augment"] = samples_per_second(
            SliceDataset(cache, "train", "2.5d", augment=True, window_on_device=True), args.workers, args.batch_size, args.samples // 2, "2.5d", device
        )
        # Memory against dataset size: the same number of batches over the cache and over a
        # copy tiled to four times the rows, one after the other at the end of the run.
        big = tiled_cache(cache, work / "tiled", 4)
        for copies, rows in ((1, cache), (4, big)):
            name = f"cache 2.5D, {copies}x rows"
            rates[name], memory[name] = samples_per_second(
                SliceDataset(rows, "train", "2.5d", window_on_device=True), args.workers, args.batch_size, 4 * args.samples, "2.5d", device
            )

        batch = torch.randint(-1024, 2000, (args.batch_size, 3, args.image_size, args.image_size)).float()
        started = time.perf_counter()
        for _ in range(5):
            warp(batch, random_affine_matrices(args.batch_size))
        batch_augment_ms = (time.perf_counter() - started) / 5 * 1000

        print(f"\nloaders: {args.workers} workers (one main thread) or in-process ({main_threads} threads), batch {args.batch_size}, {args.image_size} px, train split of {len(cache.rows('train'))} slices")
        print("| loader | samples/s | main process anonymous MiB | workers' private MiB | resident hu.npy pages MiB |")
        print("| --- | --- | --- | --- | --- |")
        for name, rate in rates.items():
            used = memory[name]
            print(f"| {name} | {rate:.0f} | {used['main_anonymous_mib']:.0f} | {used['worker_private_mib']:.0f} | {used['cache_rss_mib']:.0f} |")
        for prefix, workers in (("", f"{args.workers} workers"), ("in-process: ", "in-process")):
            cache_rate, naive_rate, copy_rate = (rates[f"{prefix}{name}"] for name in ("cache 2.5D", "naive 2.5D", "copy limit 2.5D"))
            print(f"\n{workers}: cache 2.5D / naive 2.5D: {cache_rate / naive_rate:.1f}x (target at least 10x)")
            print(f"{workers}: copy limit / cache 2.5D: {copy_rate / cache_rate:.2f}x (target at most 3x)")
            print(f"{workers}: cache 2.5D / cache 2.5D windowed in workers: {cache_rate / rates[f'{prefix}cache 2.5D windowed in workers']:.2f}x")
        print(f"\nbest cache 2.5D / best naive 2.5D: {max(rates['cache 2.5D'], rates['in-process: cache 2.5D']) / max(rates['naive 2.5D'], rates['in-process: naive 2.5D']):.1f}x")
        print(f"cache 2.5D / cache 2.5D + augment: {rates['cache 2.5D'] / rates['cache 2.5D + augment']:.2f}x")
        print(f"augmenting one batch of {args.batch_size} x 3 slices in the main process: {batch_augment_ms:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
