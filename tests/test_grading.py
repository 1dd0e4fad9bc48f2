"""The real nbgrader flow on generated submissions: scores, timeouts, tampering and library answers."""

from __future__ import annotations

import copy
import shutil
import zipfile
from pathlib import Path

import nbformat
import pandas as pd
import pytest

import argparse

from ichlab import grading
from ichlab.commands import grade as grade_command

COURSE = Path(__file__).resolve().parents[1] / "exercises"
EX1 = "ex1_hu_windows"


def _make_course(root: Path) -> Path:
    course = root / "course"
    shutil.copytree(COURSE / "source", course / "source")
    shutil.copytree(COURSE / "release", course / "release")
    shutil.copy(COURSE / "nbgrader_config.py", course)
    return course


def _notebook(kind: str, assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(COURSE / kind / assignment / f"{assignment}.ipynb", as_version=4)


def _cell(notebook: nbformat.NotebookNode, grade_id: str):
    for cell in notebook.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return cell
    raise KeyError(grade_id)


def _student_version(solved: tuple[str, ...] = (), assignment: str = EX1) -> nbformat.NotebookNode:
    """The released notebook with the solution cells named in `solved` filled in from the source."""
    notebook = _notebook("release", assignment)
    source = _notebook("source", assignment)
    for grade_id in solved:
        _cell(notebook, grade_id).source = _cell(source, grade_id).source
    return notebook


def _with_code_after(notebook: nbformat.NotebookNode, grade_id: str, code: str) -> nbformat.NotebookNode:
    notebook = copy.deepcopy(notebook)
    index = notebook.cells.index(_cell(notebook, grade_id))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(code))
    return notebook


def _ex1_class() -> dict[str, nbformat.NotebookNode]:
    everything = ("to_hu", "apply_window", "stack_windows")
    untouched = _student_version()
    students = {
        "solved": _student_version(everything),
        "untouched": untouched,
        "partial": _student_version(("to_hu",)),
    }

    # An endless loop in the second exercise; the first is solved, so 4 of 10 points remain.
    looping = _student_version(("to_hu",))
    _cell(looping, "apply_window").source = "def apply_window(hu, center, width):\n    pass\n\nwhile True:\n    pass"
    students["looping"] = looping
    students["queued-after-loop"] = _student_version(everything)

    # Test cells rewritten to do nothing, and test cells deleted.
    rewritten = copy.deepcopy(untouched)
    for cell in rewritten.cells:
        if cell.metadata.get("nbgrader", {}).get("grade"):
            cell.source = "print('all tests passed')"
    students["rewrites-tests"] = rewritten
    deleted = copy.deepcopy(untouched)
    deleted.cells = [cell for cell in deleted.cells if not cell.metadata.get("nbgrader", {}).get("grade")]
    students["deletes-tests"] = deleted

    # Wrong answers of the right shape, with the usual checks switched off before the tests run.
    cheating = copy.deepcopy(untouched)
    _cell(cheating, "to_hu").source = (
        "import numpy.testing\n"
        "numpy.testing.assert_allclose = lambda *args, **kwargs: None\n"
        "np.testing.assert_array_equal = lambda *args, **kwargs: None\n"
        "np.allclose = lambda *args, **kwargs: True\n"
        "def _hidden_check_to_hu():\n    pass\n"
        "def to_hu(stored, slope, intercept, bits_stored, pixel_representation):\n"
        "    return np.zeros(np.shape(stored), dtype=np.float32)"
    )
    students["redefines-checks"] = cheating

    # A fake score printed, and tracebacks hidden so failing tests look clean.
    faking = _with_code_after(
        untouched,
        "to_hu",
        "get_ipython().showtraceback = lambda *args, **kwargs: None\nprint('Score: 10 / 10')",
    )
    students["fakes-score"] = faking

    # The answers imported from ichlab instead of written: only to_hu, written by hand, counts.
    importing = _student_version(("to_hu",))
    _cell(importing, "apply_window").source = "from ichlab.windows import apply_window"
    _cell(importing, "stack_windows").source = "from ichlab.windows import stack_windows"
    students["imports-library"] = importing
    return students


@pytest.fixture(scope="module")
def ex1_grades(tmp_path_factory) -> pd.DataFrame:
    """Grade one class of ex1 submissions, handed in as a learning-platform zip, through `ichlab grade`."""
    root = tmp_path_factory.mktemp("grading")
    course = _make_course(root)
    downloads = root / "downloads.zip"
    with zipfile.ZipFile(downloads, "w") as archive:
        for student, notebook in _ex1_class().items():
            archive.writestr(f"{student}_attempt_1_{EX1}.ipynb", nbformat.writes(notebook))
        archive.writestr("readme.txt", "not a notebook")
        archive.writestr(f"broken_{EX1}.ipynb", "{ this is not notebook JSON")
        archive.writestr(f"nobody{EX1}.ipynb", nbformat.writes(_student_version()))

    gradebook = root / "gradebook.csv"
    parser = argparse.ArgumentParser(prog="ichlab")
    grade_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["grade", "--course", str(course), "--submissions", str(downloads), "--out", str(gradebook),
         "--assignment", EX1, "--timeout", "10"]
    )
    assert args.run(args) == 0
    table = pd.read_csv(gradebook, dtype={"student_id": str})
    table = table[table["assignment"] == EX1].set_index("student_id")
    table.attrs["course"] = course
    return table


@pytest.mark.slow
def test_solution_scores_full_marks(ex1_grades):
    assert ex1_grades.loc["solved", "score"] == 10
    assert ex1_grades.loc["solved", "max_score"] == 10


@pytest.mark.slow
def test_untouched_scores_zero(ex1_grades):
    assert ex1_grades.loc["untouched", "score"] == 0


@pytest.mark.slow
def test_partial_solution_scores_partial(ex1_grades):
    assert ex1_grades.loc["partial", "score"] == 4


@pytest.mark.slow
def test_endless_loop_times_out(ex1_grades):
    assert ex1_grades.loc["looping", "score"] == 4
    assert ex1_grades.loc["queued-after-loop", "score"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("student", ["rewrites-tests", "deletes-tests", "redefines-checks", "fakes-score"])
def test_tampering_earns_nothing(ex1_grades, student):
    assert ex1_grades.loc[student, "score"] == 0


@pytest.mark.slow
def test_library_answers_blocked(ex1_grades):
    assert ex1_grades.loc["imports-library", "score"] == 4


@pytest.mark.slow
def test_zip_collection_skips_unmatched(ex1_grades):
    assert "nobody" not in ex1_grades.index
    graded = set(ex1_grades.index) - {"broken"}
    assert graded == set(_ex1_class())


@pytest.mark.slow
def test_unreadable_notebook_scores_zero(ex1_grades):
    assert ex1_grades.loc["broken", "score"] == 0


@pytest.mark.slow
def test_feedback_written(ex1_grades):
    course = ex1_grades.attrs["course"]
    feedback = course / "feedback" / "partial" / EX1 / f"{EX1}.html"
    assert feedback.is_file()
    assert "NotImplementedError" in feedback.read_text()


@pytest.mark.slow
def test_all_assignments_without_ichlab(tmp_path):
    """Solutions score full marks and untouched versions zero with every ichlab module but the package root blocked."""
    course = _make_course(tmp_path)
    submissions = tmp_path / "submissions"
    for assignment in grading.ASSIGNMENTS:
        for student, kind in (("solved", "source"), ("untouched", "release")):
            folder = submissions / student / assignment
            folder.mkdir(parents=True)
            shutil.copy(COURSE / kind / assignment / f"{assignment}.ipynb", folder)

    blocked_everything = {name: ("ichlab.windows", "ichlab.dicom", "ichlab.series", "ichlab.models",
                                 "ichlab.metrics", "ichlab.cam") for name in grading.ASSIGNMENTS}
    original = dict(grading.LIBRARY_ANSWERS)
    grading.LIBRARY_ANSWERS.update(blocked_everything)
    try:
        report = grading.grade_class(course, submissions, tmp_path / "gradebook.csv", feedback=False)
    finally:
        grading.LIBRARY_ANSWERS.clear()
        grading.LIBRARY_ANSWERS.update(original)

    scores = report.scores.set_index(["student_id", "assignment"])["score"]
    for assignment in grading.ASSIGNMENTS:
        assert scores[("solved", assignment)] == 10, f"{assignment}: solution lost points"
        assert scores[("untouched", assignment)] == 0, f"{assignment}: untouched version earned points"


def test_course_dir_checked(tmp_path):
    with pytest.raises(grading.GradingError, match="nbgrader_config.py is missing"):
        grading.check_course_dir(tmp_path)


def test_blocker_rejects_library_import(tmp_path):
    import subprocess
    import sys

    env = grading.nbgrader_env(("ichlab.windows",), tmp_path / "site")
    blocked = subprocess.run([sys.executable, "-c", "import ichlab.windows"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0
    assert "unavailable while this exercise is graded" in blocked.stderr
    allowed = subprocess.run([sys.executable, "-c", "import ichlab.config"], env=env, capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
