"""Time the phantom generator: the quick-mode dataset and a 100-patient set at 512 px.

Run: ``.venv/bin/python benchmarks/phantom.py [--patients 100] [--size 512] [--skip-large]``.
Each dataset is written into a temporary folder that is deleted afterwards. Prints wall and CPU
seconds, milliseconds per slice and the speed-up from a second worker process, all from this
one run. CPU seconds stay meaningful when other jobs share the cores; wall seconds do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from ichlab.config import get_config
from ichlab.phantom import generate_dataset


def _cpu_seconds() -> float:
    # CPU time of this process and of its finished worker processes.
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_generation(root: Path, **settings) -> tuple[float, float, int]:
    """Generate one dataset and return (wall seconds, CPU seconds, number of slices)."""
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    generate_dataset(root, progress=False, **settings)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - start_cpu
    n_slices = json.loads((root / "phantom.json").read_text())["summary"]["n_images"]
    return seconds, cpu_seconds, n_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100, help="patients in the large set")
    parser.add_argument("--size", type=int, default=512, help="pixels per side in the large set")
    parser.add_argument("--skip-large", action="store_true", help="time only the quick-mode dataset")
    args = parser.parse_args()

    print(f"python {platform.python_version()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}")
    quick = get_config("quick").data
    quick_settings = dict(
        n_patients=quick.n_patients,
        seed=quick.seed,
        image_size=quick.phantom_size,
        slices_per_series=tuple(quick.slices_per_series),
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for workers in (1, 2):
            timing = timed_generation(Path(folder) / f"quick-{workers}", workers=workers, **quick_settings)
            rows.append((f"quick: {quick.n_patients} patients, {quick.phantom_size} px", workers, *timing))
        if not args.skip_large:
            for workers in (1, 2):
                large = dict(n_patients=args.patients, seed=0, image_size=args.size, slices_per_series=(20, 40))
                timing = timed_generation(Path(folder) / f"large-{workers}", workers=workers, **large)
                rows.append((f"{args.patients} patients, {args.size} px, 20-40 slices", workers, *timing))

    print(f"{'dataset':<40} {'workers':>7} {'wall s':>7} {'CPU s':>7} {'slices':>7} {'wall ms/slice':>14}")
    for name, workers, seconds, cpu_seconds, n_slices in rows:
        print(f"{name:<40} {workers:>7} {seconds:>7.1f} {cpu_seconds:>7.1f} {n_slices:>7} {1000 * seconds / n_slices:>14.1f}")
    by_name: dict[str, dict[int, float]] = {}
    for name, workers, seconds, _, _ in rows:
        by_name.setdefault(name, {})[workers] = seconds
    for name, seconds in by_name.items():
        print(f"speed-up from 2 workers, {name}: {seconds[1] / seconds[2]:.2f}x")
    print(f"load average after the run {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
