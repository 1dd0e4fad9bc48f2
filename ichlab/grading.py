"""Grading the exercises with nbgrader: release, collect, autograde, feedback and a CSV gradebook.

nbgrader does the work; this module only strings its steps together so that an instructor runs
one command per job. The steps read the course folder's own ``nbgrader_config.py`` (the folder
that contains it, ``source/`` and ``release/``). Autograde, feedback and export run in this
process through nbgrader's Python API, because importing nbgrader takes seconds per process.
Release and zip collection run ``python -m nbgrader`` in the course folder.

While an assignment is graded, the ichlab modules that implement its answer cannot be imported
in the grading kernel (``LIBRARY_ANSWERS``), so a submission that imports the answer instead of
writing it scores nothing for that part.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

ASSIGNMENTS = (
    "ex1_hu_windows",
    "ex2_slice_order",
    "ex3_tile_and_divide",
    "ex4_sequence_head",
    "ex5_thresholds_f1",
    "ex6_gradcam_by_hand",
)

# The ichlab modules that implement the functions each exercise has students write. Grading makes
# them unimportable in the kernel, and the hidden tests compute their references without them.
LIBRARY_ANSWERS: dict[str, tuple[str, ...]] = {
    "ex1_hu_windows": ("ichlab.windows", "ichlab.dicom"),
    "ex2_slice_order": ("ichlab.series",),
    "ex3_tile_and_divide": ("ichlab.models",),
    "ex4_sequence_head": ("ichlab.models",),
    "ex5_thresholds_f1": ("ichlab.metrics",),
    "ex6_gradcam_by_hand": ("ichlab.cam",),
}

# Per-cell execution limit in seconds, as in exercises/nbgrader_config.py.
DEFAULT_TIMEOUT_S = 60

# Learning-platform file names: "<student id>_<anything>_<notebook>.ipynb"; "{notebook}" is
# replaced by the assignment's notebook name. Student ids contain no underscore.
DEFAULT_NAME_PATTERN = r".*/(?P<student_id>[A-Za-z0-9.@-]+)_(?:[^/]*_)?(?P<file_id>{notebook}\.ipynb)$"

# The log line nbgrader 0.9 writes for a submission it could not process.
_FAILED_STUDENT = re.compile(r"There was an error processing assignment '[^']*' for student '([^']+)'")

_BLOCKER_TEMPLATE = '''\
"""Written by ichlab.grading: makes the library modules that hold an exercise's answer unimportable."""
import sys

_BLOCKED = {blocked!r}


class _BlockLibraryAnswers:
    def find_spec(self, name, path=None, target=None):
        for blocked in _BLOCKED:
            if name == blocked or name.startswith(blocked + "."):
                raise ModuleNotFoundError(
                    f"{{name}} is unavailable while this exercise is graded; write the function yourself",
                    name=name,
                )
        return None


sys.meta_path.insert(0, _BlockLibraryAnswers())
'''


class GradingError(RuntimeError):
    """Raised when an nbgrader step fails or the course folder or submissions are unusable."""


@dataclass
class GradeReport:
    """Outputs of one grading run."""

    gradebook_csv: Path  # nbgrader's export: one row per student and assignment
    feedback_dir: Path | None  # feedback/<student>/<assignment>/<notebook>.html, or None when skipped
    scores: pd.DataFrame  # student_id, assignment, score, max_score for the graded assignments
    collected: dict[str, list[str]] = field(default_factory=dict)  # assignment to student ids
    skipped_files: list[str] = field(default_factory=list)  # downloaded files that matched no student
    failed: dict[str, list[str]] = field(default_factory=dict)  # assignment to students nbgrader could not grade


def default_course_dir() -> Path:
    """Return the ``exercises`` folder of this checkout (the course folder nbgrader runs in)."""
    return Path(__file__).resolve().parents[1] / "exercises"


def check_course_dir(course_dir: str | Path) -> Path:
    """Return ``course_dir`` as an absolute path after checking it is an nbgrader course folder.

    Raises
    ------
    GradingError
        If ``nbgrader_config.py`` or ``source/`` is missing.
    """
    course_dir = Path(course_dir).expanduser().resolve()
    for required in ("nbgrader_config.py", "source"):
        if not (course_dir / required).exists():
            raise GradingError(
                f"{course_dir} is not a course folder: {required} is missing; "
                "pass the folder that holds nbgrader_config.py and source/<assignment>/"
            )
    return course_dir


def nbgrader_env(blocked_modules: Sequence[str] = (), work_dir: Path | None = None) -> dict[str, str]:
    """Return the environment for an nbgrader step, optionally with library modules blocked.

    The venv's ``bin`` folder goes first on PATH because nbgrader runs ``alembic`` from there.
    Blocking writes a ``sitecustomize.py`` into ``work_dir`` and puts that folder first on
    PYTHONPATH, so every kernel nbgrader starts refuses to import the listed modules.
    """
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if blocked_modules:
        if work_dir is None:
            raise ValueError("blocking library modules needs a work_dir for sitecustomize.py")
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "sitecustomize.py").write_text(_BLOCKER_TEMPLATE.format(blocked=tuple(blocked_modules)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work_dir), env.get("PYTHONPATH", "")]))
    return env


def run_nbgrader(course_dir: Path, arguments: Sequence[str], env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run ``python -m nbgrader ARGUMENTS`` in ``course_dir`` and return its log.

    Raises
    ------
    GradingError
        If nbgrader exits with a non-zero status and ``check`` is true; the message contains
        the end of its log.
    """
    command = [sys.executable, "-m", "nbgrader", *arguments]
    logger.info("running %s in %s", " ".join(command[2:]), course_dir)
    completed = subprocess.run(
        command, cwd=course_dir, env=env or nbgrader_env(), capture_output=True, text=True, check=False
    )
    log = completed.stdout + completed.stderr
    if completed.returncode != 0 and check:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise GradingError(f"nbgrader {arguments[0]} failed with exit status {completed.returncode}:\n{tail}")
    return log


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    # Kernels started by nbgrader copy os.environ, so the blocker and PATH reach them from here.
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _nbgrader_api(course_dir: Path, timeout_s: int):
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course_dir)).load_config()
    config.CourseDirectory.root = str(course_dir)
    config.Execute.timeout = int(timeout_s)
    # The exchange (nbgrader's release/fetch server folder) is unused here; a writable folder
    # keeps NbGraderAPI from logging a critical error about /usr/local/share/nbgrader/exchange.
    config.Exchange.root = tempfile.gettempdir()
    return NbGraderAPI(config=config)


def _export_csv(course_dir: Path, out_csv: Path) -> None:
    from nbgrader.api import Gradebook
    from nbgrader.plugins import CsvExportPlugin

    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gradebook:
        CsvExportPlugin(to=str(out_csv)).export(gradebook)


def _check_step(result: dict, step: str, assignment: str) -> None:
    if not result.get("success"):
        details = "\n".join((result.get("log", "") + result.get("error", "")).strip().splitlines()[-15:])
        raise GradingError(f"nbgrader {step} failed for {assignment}:\n{details}")


def _assignments_or_all(course_dir: Path, assignments: Sequence[str] | None) -> list[str]:
    available = sorted(path.name for path in (course_dir / "source").iterdir() if path.is_dir())
    if not assignments:
        return available
    unknown = [name for name in assignments if name not in available]
    if unknown:
        raise GradingError(f"assignment {', '.join(unknown)} not found in {course_dir / 'source'}; available: {', '.join(available)}")
    return list(assignments)


def release(course_dir: str | Path, assignments: Sequence[str] | None = None, db_url: str | None = None) -> list[Path]:
    """Generate the student versions ``release/<assignment>/`` from ``source/<assignment>/``.

    Parameters
    ----------
    course_dir
        The course folder.
    assignments
        Assignment names; default all in ``source/``.
    db_url
        Gradebook to record the assignments in (SQLAlchemy URL); default the course's
        ``gradebook.db``.

    Returns
    -------
    list of Path
        The released notebooks.
    """
    course_dir = check_course_dir(course_dir)
    released = []
    for assignment in _assignments_or_all(course_dir, assignments):
        arguments = ["generate_assignment", assignment, "--force"]
        if db_url:
            arguments.append(f"--CourseDirectory.db_url={db_url}")
        run_nbgrader(course_dir, arguments)
        released.extend(sorted((course_dir / "release" / assignment).glob("*.ipynb")))
    return released


def _is_submitted_layout(folder: Path, assignments: Sequence[str]) -> bool:
    # nbgrader's own layout: <student>/<assignment>/<notebook>.ipynb
    return any(folder.glob(f"*/{assignment}/*.ipynb") for assignment in assignments)


def collect_submissions(
    course_dir: Path, submissions: str | Path, assignments: Sequence[str], name_pattern: str = DEFAULT_NAME_PATTERN
) -> tuple[dict[str, list[str]], list[str]]:
    """Put submissions under ``course_dir/submitted/<student>/<assignment>/``.

    ``submissions`` is either a folder already in that layout, or a zip file or folder of files
    downloaded from a learning platform (zip files inside it are unpacked), which nbgrader's
    ``zip_collect`` files by ``name_pattern``.

    Returns
    -------
    collected, skipped
        Assignment to the student ids found, and the downloaded notebooks that matched no
        assignment or student.
    """
    submissions = Path(submissions).expanduser().resolve()
    if not submissions.exists():
        raise GradingError(f"submissions not found: {submissions}")

    if submissions.is_dir() and _is_submitted_layout(submissions, assignments):
        for assignment in assignments:
            for notebook_dir in sorted(submissions.glob(f"*/{assignment}")):
                target = course_dir / "submitted" / notebook_dir.parent.name / assignment
                shutil.copytree(notebook_dir, target, dirs_exist_ok=True)
        return _submitted_students(course_dir, assignments), []

    downloads = [submissions] if submissions.is_file() else sorted(p for p in submissions.rglob("*") if p.is_file())
    for assignment in assignments:
        archive = course_dir / "downloaded" / assignment / "archive"
        if archive.exists():
            shutil.rmtree(archive)
        archive.mkdir(parents=True)
        for path in downloads:
            if path.suffix in (".zip", ".ipynb"):
                shutil.copy2(path, archive / path.name)
        pattern = name_pattern.replace("{notebook}", re.escape(_notebook_name(course_dir, assignment)))
        run_nbgrader(
            course_dir,
            ["zip_collect", assignment, "--force", "--strict", f"--FileNameCollectorPlugin.named_regexp={pattern}"],
        )

    collected = _submitted_students(course_dir, assignments)
    notebook_names = {f"{_notebook_name(course_dir, name)}.ipynb" for name in assignments}
    skipped = [name for name in _downloaded_notebook_names(downloads) if not any(name.endswith(n) for n in notebook_names)]
    return collected, skipped


def _notebook_name(course_dir: Path, assignment: str) -> str:
    notebooks = sorted((course_dir / "source" / assignment).glob("*.ipynb"))
    if len(notebooks) != 1:
        raise GradingError(f"expected one notebook in {course_dir / 'source' / assignment}, found {len(notebooks)}")
    return notebooks[0].stem


def _downloaded_notebook_names(downloads: Sequence[Path]) -> list[str]:
    names = []
    for path in downloads:
        if path.suffix == ".ipynb":
            names.append(path.name)
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names.extend(Path(member).name for member in archive.namelist() if member.endswith(".ipynb"))
    return names


def _submitted_students(course_dir: Path, assignments: Sequence[str]) -> dict[str, list[str]]:
    submitted = course_dir / "submitted"
    return {name: sorted(p.parent.name for p in submitted.glob(f"*/{name}") if p.is_dir()) for name in assignments}


def _assignment_in_gradebook(course_dir: Path, assignment: str) -> bool:
    from nbgrader.api import Gradebook, MissingEntry

    database = course_dir / "gradebook.db"
    if not database.exists():
        return False
    with Gradebook(f"sqlite:///{database}") as gradebook:
        try:
            gradebook.find_assignment(assignment)
        except MissingEntry:
            return False
    return True


def grade_class(
    course_dir: str | Path,
    submissions: str | Path | None,
    out_csv: str | Path,
    *,
    assignments: Sequence[str] | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    feedback: bool = True,
    block_library_answers: bool = True,
    name_pattern: str = DEFAULT_NAME_PATTERN,
) -> GradeReport:
    """Collect, autograde, write feedback and export a CSV gradebook in one call.

    Parameters
    ----------
    course_dir
        The course folder (``nbgrader_config.py``, ``source/``); grading writes ``submitted/``,
        ``autograded/``, ``feedback/`` and ``gradebook.db`` there.
    submissions
        A folder in nbgrader's ``<student>/<assignment>/`` layout, or a zip file or folder of
        learning-platform downloads named ``<student id>_..._<notebook>.ipynb``; None grades
        what is already in ``course_dir/submitted``.
    out_csv
        Where to write the gradebook (nbgrader's export: one row per student and assignment).
    assignments
        Which assignments to grade; default every assignment that has submissions.
    timeout_s
        Per-cell execution limit in seconds; a cell that runs longer is interrupted and fails.
    feedback
        Write one HTML feedback file per student and notebook.
    block_library_answers
        Make the ichlab modules in ``LIBRARY_ANSWERS`` unimportable while grading.
    name_pattern
        Regular expression for downloaded file names (see ``DEFAULT_NAME_PATTERN``).

    Returns
    -------
    GradeReport

    Raises
    ------
    GradingError
        If the course folder is incomplete, nothing was submitted, or an nbgrader step fails.
    """
    course_dir = check_course_dir(course_dir)
    names = _assignments_or_all(course_dir, assignments)
    collected: dict[str, list[str]] = {}
    skipped: list[str] = []
    if submissions is not None:
        collected, skipped = collect_submissions(course_dir, submissions, names, name_pattern)
        for name in skipped:
            logger.warning("skipped %s: its name matches no assignment notebook as <student id>_..._<notebook>.ipynb", name)
    else:
        collected = _submitted_students(course_dir, names)
    if not assignments:
        names = [name for name in names if collected.get(name)]
    if not any(collected.get(name) for name in names):
        raise GradingError(f"no submissions found for {', '.join(names) or 'any assignment'} in {course_dir / 'submitted'}")

    failed: dict[str, list[str]] = {}
    out_csv = Path(out_csv).expanduser().resolve()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    api = _nbgrader_api(course_dir, timeout_s)
    with tempfile.TemporaryDirectory(prefix="ichlab-grading-") as work, warnings.catch_warnings():
        # nbgrader 0.9.6 triggers SQLAlchemy autoflush warnings that do not affect the grades.
        warnings.filterwarnings("ignore", message=".*not in session.*")
        # Test cells that nbgrader adds back for a submission that deleted them carry no cell id.
        warnings.filterwarnings("ignore", message="Cell is missing an id field")
        for assignment in names:
            if not collected.get(assignment):
                logger.warning("no submissions for %s; skipped", assignment)
                continue
            blocked = LIBRARY_ANSWERS.get(assignment, ()) if block_library_answers else ()
            with _environment(nbgrader_env(blocked, Path(work) / assignment)):
                if not _assignment_in_gradebook(course_dir, assignment):
                    _check_step(api.generate_assignment(assignment, force=True), "generate_assignment", assignment)
                logger.info("autograding %s: %d submissions", assignment, len(collected[assignment]))
                result = api.autograde(assignment, "*", force=True, create=True)
                # nbgrader grades the other students when one submission cannot be read, then reports failure.
                failed[assignment] = sorted(set(_FAILED_STUDENT.findall(result.get("log", ""))))
                if failed[assignment]:
                    logger.warning(
                        "nbgrader could not grade %s for %d students (%s): their notebooks could not be read or run",
                        assignment, len(failed[assignment]), ", ".join(failed[assignment]),
                    )
                else:
                    _check_step(result, "autograde", assignment)
                if feedback:
                    result = api.generate_feedback(assignment, force=True)
                    if not failed[assignment]:
                        _check_step(result, "generate_feedback", assignment)
        _export_csv(course_dir, out_csv)

    table = pd.read_csv(out_csv, dtype={"student_id": str})
    submitted_pairs = {(name, student) for name in names for student in collected.get(name, [])}
    is_submitted = [(row.assignment, row.student_id) in submitted_pairs for row in table.itertuples()]
    scores = table.loc[is_submitted, ["student_id", "assignment", "score", "max_score"]].reset_index(drop=True)
    return GradeReport(
        gradebook_csv=out_csv,
        feedback_dir=course_dir / "feedback" if feedback else None,
        scores=scores,
        collected=collected,
        skipped_files=skipped,
        failed={name: students for name, students in failed.items() if students},
    )
