"""The exercise notebooks: nbgrader structure, hidden tests, and released versions that match their sources."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from ichlab import grading
from ichlab.course import SETUP_CELL

COURSE = Path(__file__).resolve().parents[1] / "exercises"


def _source(assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(COURSE / "source" / assignment / f"{assignment}.ipynb", as_version=4)


def _release(assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(COURSE / "release" / assignment / f"{assignment}.ipynb", as_version=4)


def _grade_cells(notebook: nbformat.NotebookNode) -> list:
    return [cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("grade")]


def test_each_assignment_has_one_notebook():
    for assignment in grading.ASSIGNMENTS:
        assert [p.name for p in (COURSE / "source" / assignment).glob("*.ipynb")] == [f"{assignment}.ipynb"]
        assert [p.name for p in (COURSE / "release" / assignment).glob("*.ipynb")] == [f"{assignment}.ipynb"]


@pytest.mark.parametrize("assignment", grading.ASSIGNMENTS)
def test_source_structure(assignment):
    notebook = _source(assignment)
    assert notebook.metadata.kernelspec.name == "python3"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells[0].source == SETUP_CELL

    # nbval compares stored outputs only for cells with an execution count.
    assert all(cell.execution_count is not None for cell in code_cells), "run the source notebook before committing"

    tests = _grade_cells(notebook)
    assert len(tests) >= 2, "at least two graded test cells, so partial solutions earn partial marks"
    assert sum(cell.metadata.nbgrader.points for cell in tests) == 10
    for cell in tests:
        assert cell.metadata.nbgrader.locked
        assert "### BEGIN HIDDEN TESTS" in cell.source
        assert "### END HIDDEN TESTS" in cell.source
        hidden = cell.source.split("### BEGIN HIDDEN TESTS")[1]
        assert "ichlab" not in hidden, "hidden tests compute references without ichlab"
        assert "default_rng()" in hidden or "torch.seed()" in hidden, "hidden tests draw fresh random inputs"
        assert not any(output.get("output_type") == "error" for output in cell.outputs)

    solutions = [cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("solution")]
    assert solutions and all("### BEGIN SOLUTION" in cell.source for cell in solutions)
    for cell in solutions:
        assert "import ichlab" not in cell.source
        assert "from ichlab" not in cell.source


@pytest.mark.parametrize("assignment", grading.ASSIGNMENTS)
def test_release_hides_answers(assignment):
    released = _release(assignment)
    text = json.dumps(released.cells)
    assert "BEGIN SOLUTION" not in text
    assert "HIDDEN TESTS" not in text
    assert "_hidden_check" not in text
    assert "raise NotImplementedError()" in text
    assert all(not cell.get("outputs") for cell in released.cells if cell.cell_type == "code")
    assert len(_grade_cells(released)) == len(_grade_cells(_source(assignment)))


@pytest.mark.slow
def test_release_matches_sources(tmp_path, monkeypatch):
    """The committed release/ is what nbgrader generates from source/ (regenerate with `ichlab grade --release`)."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    course = tmp_path / "course"
    shutil.copytree(COURSE / "source", course / "source")
    shutil.copy(COURSE / "nbgrader_config.py", course)
    # nbgrader upgrades its database by running the `alembic` script next to the interpreter.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))

    config = Config()
    config.CourseDirectory.root = str(course)
    config.CourseDirectory.db_url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    api = NbGraderAPI(config=config)
    for assignment in grading.ASSIGNMENTS:
        result = api.generate_assignment(assignment, force=True)
        assert result["success"], result.get("error")
        generated = (course / "release" / assignment / f"{assignment}.ipynb").read_text()
        committed = (COURSE / "release" / assignment / f"{assignment}.ipynb").read_text()
        assert generated == committed, f"release/{assignment} is out of date; run `ichlab grade --release`"


@pytest.mark.slow
def test_release_command_writes_student_version(tmp_path):
    course = tmp_path / "course"
    shutil.copytree(COURSE / "source", course / "source")
    shutil.copy(COURSE / "nbgrader_config.py", course)
    released = grading.release(course, ["ex2_slice_order"], db_url=f"sqlite:///{tmp_path / 'gradebook.db'}")
    assert released == [course / "release" / "ex2_slice_order" / "ex2_slice_order.ipynb"]
    assert released[0].read_text() == (COURSE / "release" / "ex2_slice_order" / "ex2_slice_order.ipynb").read_text()
    assert not (course / "gradebook.db").exists()
