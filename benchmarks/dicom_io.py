"""Measure header-scan and DICOM-to-three-window throughput against naive baselines.

Writes ``--files`` RSNA-sized CT slices (512 x 512, 16-bit, about 0.5 MB each) into a
temporary folder and times, in one run, with a warm page cache (files read once before) and
with a cold one (each file's cached pages dropped with ``posix_fadvise(DONTNEED)`` before
every timed run, which needs no root):

- header scan: ``ichlab.dicom.scan_headers`` (parallel and single process) against the same
  header fields taken from a naive full read (``pydicom.dcmread`` with pixel decoding);
- DICOM to three windows: ``load_hu`` then ``stack_windows`` (float32) against a naive
  ``dcmread``, ``pixel_array`` in float64 and three clipped windows.

Each timing is the best of ``--repeats`` runs; ratios compare numbers from the same run.
Run: ``.venv/bin/python benchmarks/dicom_io.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.uid import generate_uid

from ichlab.dicom import ct_slice_dataset, load_hu, scan_headers
from ichlab.windows import WINDOWS, stack_windows


def write_series(folder: Path, n_files: int, size: int = 512) -> list[Path]:
    rng = np.random.default_rng(0)
    series_uid = generate_uid()
    paths = []
    for index in range(n_files):
        pixels = rng.integers(0, 2500, size=(size, size), dtype=np.uint16)
        ds = ct_slice_dataset(
            pixels, bits_stored=12, signed=False, position=(-125.0, -125.0, 5.0 * index),
            pixel_spacing=(0.488, 0.488), series_uid=series_uid,
        )
        ds.PatientID = "ID_bench"
        ds.StudyInstanceUID = "1.2.826.0.1.2"
        ds.InstanceNumber = index + 1
        ds.WindowCenter, ds.WindowWidth = 40, 80
        path = folder / f"ID_{index:06x}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def naive_header_read(paths: list[Path]) -> int:
    """Build the same header rows from full reads: every file's pixels are read and decoded."""
    rows = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.pixel_array
        rows.append(
            {
                "file": str(path),
                "patient_id": str(ds.PatientID),
                "study_uid": str(ds.StudyInstanceUID),
                "series_uid": str(ds.SeriesInstanceUID),
                "sop_uid": str(ds.SOPInstanceUID),
                "position": tuple(float(value) for value in ds.ImagePositionPatient),
                "orientation": tuple(float(value) for value in ds.ImageOrientationPatient),
                "pixel_spacing": tuple(float(value) for value in ds.PixelSpacing),
                "slice_thickness": float(ds.SliceThickness),
                "rows": int(ds.Rows),
                "columns": int(ds.Columns),
                "intercept": float(ds.RescaleIntercept),
                "slope": float(ds.RescaleSlope),
                "bits_stored": int(ds.BitsStored),
                "pixel_representation": int(ds.PixelRepresentation),
                "modality": str(ds.Modality),
            }
        )
    return len(rows)


def naive_windows(paths: list[Path]) -> int:
    for path in paths:
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # float64
        channels = []
        for center, width in WINDOWS.values():
            channels.append(np.clip((hu - (center - width / 2)) / width, 0, 1))
        np.stack(channels)
    return len(paths)


def ichlab_windows(paths: list[Path]) -> int:
    for path in paths:
        stack_windows(load_hu(path, warn_missing_rescale=False))
    return len(paths)


def ichlab_windows_batched(paths: list[Path], batch: int = 8) -> int:
    for start in range(0, len(paths), batch):
        hu = np.stack([load_hu(path, warn_missing_rescale=False) for path in paths[start : start + batch]])  # (B, H, W)
        stack_windows(torch.from_numpy(hu))  # (B, 3, H, W); a training loop does this on the GPU
    return len(paths)


def drop_page_cache(paths: list[Path]) -> None:
    os.sync()
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def warm_page_cache(paths: list[Path]) -> None:
    for path in paths:
        path.read_bytes()


def best_rate(function, repeats: int, before=None) -> float:
    best = float("inf")
    count = 0
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        count = function()
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400, help="number of 512 x 512 slices to write")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the best is kept")
    args = parser.parse_args()
    torch.set_num_threads(1)

    cores = os.cpu_count() or 1
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_series(Path(folder), args.files)
        subset = paths[: min(len(paths), 200)]
        for cache, prepare in (("warm", lambda: warm_page_cache(paths)), ("cold", lambda: drop_page_cache(paths))):
            results[cache] = {
                "scan_parallel": best_rate(lambda: len(scan_headers(folder, workers=cores, progress=False).headers), args.repeats, prepare),
                "scan_serial": best_rate(lambda: len(scan_headers(folder, workers=1, progress=False).headers), args.repeats, prepare),
                "full_read": best_rate(lambda: naive_header_read(paths), args.repeats, prepare),
                "naive": best_rate(lambda: naive_windows(subset), args.repeats, prepare),
                "ours": best_rate(lambda: ichlab_windows(subset), args.repeats, prepare),
                "batched": best_rate(lambda: ichlab_windows_batched(subset), args.repeats, prepare),
            }

    print(f"machine: {platform.machine()}, {cores} CPU cores, python {platform.python_version()}, pydicom {pydicom.__version__}")
    print(f"files: {args.files} CT slices of 512 x 512, 16-bit (windows on the first {len(subset)}); best of {args.repeats} runs")
    for cache, rates in results.items():
        full_read, naive = rates["full_read"], rates["naive"]
        print(f"\n{cache} page cache")
        print("  header scan, files/s:")
        print(f"    scan_headers, {cores} worker processes: {rates['scan_parallel']:7.0f}  ({rates['scan_parallel'] / full_read:.1f}x)")
        print(f"    scan_headers, 1 process:            {rates['scan_serial']:7.0f}  ({rates['scan_serial'] / full_read:.1f}x)")
        print(f"    naive full dcmread with pixels:     {full_read:7.0f}  (1.0x)")
        print("  DICOM to three windows, slices/s, 1 process:")
        print(f"    load_hu + stack_windows, NumPy float32:      {rates['ours']:6.0f}  ({rates['ours'] / naive:.2f}x)")
        print(f"    load_hu, then stack_windows per torch batch of 8: {rates['batched']:6.0f}  ({rates['batched'] / naive:.2f}x)")
        print(f"    naive dcmread + float64 NumPy windows:       {naive:6.0f}  (1.0x)")


if __name__ == "__main__":
    main()
