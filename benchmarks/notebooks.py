"""Measure how long each course notebook takes in quick mode, as CI runs them, against its estimate.

Run from the repository root::

    .venv/bin/python benchmarks/notebooks.py

Executes every notebook listed in ``ichlab.course.NOTEBOOKS`` in course order with nbclient,
each from a clean kernel, in its own folder as nbval does, with ``ICHLAB_MODE`` set to the
mode measured (default quick). The notebooks' stored files are not changed. By default the
data folder (``ICHLAB_DATA_HOME``) is a new temporary folder, as on a fresh CI clone. So the
first notebook that needs data generates it, and notebooks 04 to 06 train their checkpoints.
``--data-home`` reuses a folder instead. Prints one row per notebook: wall seconds, the
estimate from ``ichlab.course.NOTEBOOKS`` and their ratio, then the total.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from ichlab.config import DATA_HOME_VARIABLE, MODE_VARIABLE, MODES
from ichlab.course import NOTEBOOKS

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def time_notebook(path: Path, cell_timeout: int) -> tuple[float, str]:
    """Execute ``path`` from a clean kernel in its own folder, and return wall seconds and "ok" or the error."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=cell_timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
        status = "ok"
    except CellExecutionError as error:
        last_line = ANSI_COLOUR.sub("", str(error)).strip().splitlines()[-1]
        status = f"failed: {last_line[:120]}"
    return time.perf_counter() - start, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, default="quick", help="ICHLAB_MODE for the kernels")
    parser.add_argument("--data-home", type=Path, default=None, help="reuse this data folder instead of a new temporary one")
    parser.add_argument("--cell-timeout", type=int, default=900, help="seconds one cell may run before it counts as failed")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for the kernels")
    args = parser.parse_args(argv)

    os.environ[MODE_VARIABLE] = args.mode
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.pop("MPLBACKEND", None)  # kernels pick the inline backend, as under nbval
    estimate_column = MODES.index(args.mode)

    with tempfile.TemporaryDirectory(prefix="ichlab-notebook-bench-") as scratch:
        os.environ[DATA_HOME_VARIABLE] = str(args.data_home or scratch)
        print(f"mode {args.mode}, {args.threads} threads, data in {'a new temporary folder' if args.data_home is None else args.data_home}")
        print("| notebook | seconds | estimate (s) | measured / estimate | status |")
        print("| --- | --- | --- | --- | --- |")
        total = 0.0
        total_estimate = 0.0
        for name, minutes in NOTEBOOKS.items():
            path = NOTEBOOK_DIR / f"{name}.ipynb"
            estimate = minutes[estimate_column] * 60
            if not path.is_file():
                print(f"| `{name}` | - | {estimate:.0f} | - | missing |")
                continue
            seconds, status = time_notebook(path, args.cell_timeout)
            total += seconds
            total_estimate += estimate
            print(f"| `{name}` | {seconds:.0f} | {estimate:.0f} | {seconds / estimate:.2f} | {status} |", flush=True)
        print(f"| total | {total:.0f} | {total_estimate:.0f} | {total / max(total_estimate, 1e-9):.2f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
