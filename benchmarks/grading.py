"""Time grading a class of exercise submissions with nbgrader, and what one notebook's grading costs.

Run: .venv/bin/python benchmarks/grading.py [--students 30] [--assignment ex1_hu_windows]

It grades a generated class (a third solved, a third half solved, a third untouched) in a
temporary copy of exercises/ with the nbgrader steps of ichlab.grading, timing each step. Then it
measures the parts of one notebook's cost in a fresh kernel: kernel start, the imports of each
exercise, and running the whole solved notebook.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import start_new_kernel

from ichlab import grading

COURSE = Path(__file__).resolve().parents[1] / "exercises"

IMPORTS = {
    "numpy (ex1, ex2)": "import numpy",
    "numpy + sklearn.metrics (ex5)": "import numpy\nfrom sklearn.metrics import f1_score",
    "torch (ex4)": "import torch",
    "torch + timm (ex3)": "import torch\nimport timm",
    "torch + timm + pytorch_grad_cam (ex6)": "import torch\nimport timm\nimport pytorch_grad_cam",
}


def make_class(root: Path, assignment: str, n_students: int) -> Path:
    source = nbformat.read(COURSE / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    released = nbformat.read(COURSE / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    solution_ids = [c.metadata.nbgrader.grade_id for c in source.cells if c.metadata.get("nbgrader", {}).get("solution")]
    submissions = root / "submissions"
    for index in range(n_students):
        notebook = copy.deepcopy(released)
        if index % 3 == 0:
            solved = solution_ids
        elif index % 3 == 1:
            solved = solution_ids[: len(solution_ids) // 2]
        else:
            solved = []
        for cell in notebook.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if grade_id in solved:
                cell.source = next(c.source for c in source.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
        folder = submissions / f"student{index:02d}" / assignment
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{assignment}.ipynb")
    return submissions


def time_grading(root: Path, assignment: str, submissions: Path) -> float:
    """Return the seconds ichlab.grading.grade_class takes for the class in `submissions`."""
    course = root / "course"
    shutil.copytree(COURSE / "source", course / "source")
    shutil.copytree(COURSE / "release", course / "release")
    shutil.copy(COURSE / "nbgrader_config.py", course)
    start = time.perf_counter()
    report = grading.grade_class(course, submissions, root / "gradebook.csv", assignments=[assignment])
    seconds = time.perf_counter() - start
    assert len(report.scores) == len(list(submissions.iterdir()))
    return seconds


def time_process_start() -> float:
    """Return the seconds a new Python process needs to import nbgrader's applications (best of 2)."""
    runs = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import nbgrader.apps"], check=True)
        runs.append(time.perf_counter() - start)
    return min(runs)


def time_kernel(code: str) -> tuple[float, float]:
    """Return (kernel start seconds, seconds to run `code`) in a fresh python3 kernel."""
    start = time.perf_counter()
    manager, client = start_new_kernel(kernel_name="python3")
    started = time.perf_counter() - start
    try:
        start = time.perf_counter()
        reply = client.execute_interactive(code, timeout=300, output_hook=lambda message: None)
        ran = time.perf_counter() - start
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"benchmark code failed in the kernel: {code!r}")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return started, ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30, help="class size")
    parser.add_argument("--assignment", default="ex1_hu_windows", choices=grading.ASSIGNMENTS, help="assignment to grade")
    args = parser.parse_args()

    print(f"python {sys.version.split()[0]}, nbgrader {subprocess.check_output([sys.executable, '-m', 'nbgrader', '--version'], text=True).split()[-1]}")
    with tempfile.TemporaryDirectory(prefix="ichlab-bench-grading-") as work:
        root = Path(work)
        submissions = make_class(root, args.assignment, args.students)
        total = time_grading(root, args.assignment, submissions)
    print(f"\ngrading {args.students} submissions of {args.assignment} (grade_class: collect, autograde, feedback, export)")
    print(f"  total {total:.1f} s, {total / args.students:.2f} s per student")

    process_start = time_process_start()
    steps = 4  # generate_assignment, autograde, generate_feedback, export
    print(f"  a new process importing nbgrader: {process_start:.2f} s; one process per step would add "
          f"{steps * process_start:.1f} s ({steps * process_start / total:.1%} of this run), which grade_class avoids")

    print("\none notebook, in a fresh kernel (best of 2):")
    starts, imports = [], {}
    for label, code in IMPORTS.items():
        runs = [time_kernel(code) for _ in range(2)]
        starts.extend(run[0] for run in runs)
        imports[label] = min(run[1] for run in runs)
    kernel_start = min(starts)
    print(f"  kernel start                            {kernel_start:6.2f} s")
    for label, seconds in imports.items():
        print(f"  import {label:34s} {seconds:6.2f} s  ({seconds / kernel_start:.1f}x kernel start)")
    solved = nbformat.read(COURSE / "source" / args.assignment / f"{args.assignment}.ipynb", as_version=4)
    code = "\n".join(cell.source for cell in solved.cells if cell.cell_type == "code")
    _, whole = time_kernel(code)
    print(f"  run every cell of the solved {args.assignment:20s} {whole:6.2f} s")
    print(f"  grading per student, measured above         {total / args.students:6.2f} s")


if __name__ == "__main__":
    main()
