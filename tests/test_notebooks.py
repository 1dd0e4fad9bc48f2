"""Conventions every course notebook and exercise notebook follows, and the repository URL in one place.

These checks read the stored notebooks without running them, because nbval runs them. They
cover the kernel name, the shared opening (title, setup cell, ``course.start``), the summary,
and stored outputs that come from one clean run and stay small. The Colab links and setup cells
must use ``ichlab.course.REPOSITORY_URL``, which ``ichlab course set-repository`` rewrites.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from ichlab import course
from ichlab.commands import course as course_command
from ichlab.config import data_home

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
EXERCISE_DIR = REPO_ROOT / "exercises"
README = REPO_ROOT / "README.md"
STUDENTS_GUIDE = REPO_ROOT / "docs" / "STUDENTS.md"

KERNEL_NAME = "python3"
IGNORE_OUTPUT_MARK = "# NBVAL_IGNORE_OUTPUT"
# Stored outputs stay small: no single output above 200 kB, no notebook file above 1 MB.
MAX_OUTPUT_BYTES = 200_000
MAX_NOTEBOOK_BYTES = 1_000_000
# Notebooks tell the story and call ichlab: short cells, no classes, at most two small helpers.
MAX_CODE_LINES = 30
MAX_FUNCTIONS = 2
NEW_REPOSITORY_URL = "https://github.com/teaching-lab/ich-course"


def _exercise_notebooks() -> list[Path]:
    paths = sorted(EXERCISE_DIR.glob("source/**/*.ipynb")) + sorted(EXERCISE_DIR.glob("release/**/*.ipynb"))
    return [path for path in paths if ".ipynb_checkpoints" not in path.parts]


def _course_path(name: str) -> Path:
    return NOTEBOOK_DIR / f"{name}.ipynb"


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def _code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _output_text(output: dict) -> str:
    """Return the text a reader sees in one output: stream text, text data and tracebacks."""
    parts = []
    if "text" in output:
        parts.append(output["text"])
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            parts.append(value if isinstance(value, str) else json.dumps(value))
    parts.extend(output.get("traceback", []))
    return "\n".join(parts)


@pytest.fixture(params=list(course.NOTEBOOKS), ids=list(course.NOTEBOOKS))
def course_notebook(request) -> tuple[str, nbformat.NotebookNode]:
    """Each course notebook with its name; skipped when missing (test_course_notebook_exists fails then)."""
    name = request.param
    path = _course_path(name)
    if not path.is_file():
        pytest.skip(f"notebooks/{name}.ipynb does not exist yet")
    return name, _read(path)


all_notebooks = pytest.mark.parametrize(
    "path",
    [_course_path(name) for name in course.NOTEBOOKS if _course_path(name).is_file()] + _exercise_notebooks(),
    ids=lambda path: str(path.relative_to(REPO_ROOT)),
)


# Names and kernels

@pytest.mark.parametrize("name", list(course.NOTEBOOKS))
def test_course_notebook_exists(name):
    assert _course_path(name).is_file(), f"notebooks/{name}.ipynb is missing; ichlab.course.NOTEBOOKS lists it"


def test_notebook_folder_matches_course_list():
    found = sorted(path.stem for path in NOTEBOOK_DIR.glob("*.ipynb"))
    unlisted = [name for name in found if name not in course.NOTEBOOKS]
    assert not unlisted, f"notebooks/ holds {unlisted}, which ichlab.course.NOTEBOOKS does not list"


def test_course_list_is_numbered_in_order():
    prefixes = [name[:3] for name in course.NOTEBOOKS]
    assert prefixes == [f"{index:02d}_" for index in range(len(course.NOTEBOOKS))]


@all_notebooks
def test_notebook_kernel_is_python3(path):
    kernelspec = _read(path).metadata.get("kernelspec", {})
    assert kernelspec.get("name") == KERNEL_NAME, f"{path.name}: kernelspec name is {kernelspec.get('name')!r}, expected {KERNEL_NAME!r}"


# The shared opening and closing

def test_notebook_opens_with_numbered_title(course_notebook):
    name, notebook = course_notebook
    first = notebook.cells[0]
    assert first.cell_type == "markdown", f"{name}: the first cell must be markdown with the title"
    assert first.source.startswith(f"# {name[:2]} · "), f"{name}: the title must read '# {name[:2]} · Title'"


def test_first_code_cell_is_setup_cell(course_notebook):
    name, notebook = course_notebook
    code = _code_cells(notebook)
    assert code, f"{name} has no code cells"
    assert code[0].source == course.SETUP_CELL, f"{name}: the first code cell must equal ichlab.course.SETUP_CELL"


def test_second_code_cell_starts_course(course_notebook):
    name, notebook = course_notebook
    code = _code_cells(notebook)
    assert len(code) >= 2, f"{name} has fewer than two code cells"
    source = code[1].source
    assert source.splitlines()[0] == IGNORE_OUTPUT_MARK, f"{name}: the course.start cell prints the device and paths, so it must start with {IGNORE_OUTPUT_MARK}"
    assert re.search(rf"""\bcourse\.start\(\s*["']{re.escape(name)}["']\s*\)""", source), f"{name}: the second code cell must call course.start({name!r})"


def test_notebook_has_summary(course_notebook):
    name, notebook = course_notebook
    headings = [line for cell in notebook.cells if cell.cell_type == "markdown" for line in cell.source.splitlines()]
    assert "## Summary" in headings, f"{name} has no '## Summary' heading"


def _readme_exercises(name: str) -> list[str]:
    """Return the exercises that the README's course map pairs with notebook ``name``."""
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith(f"| `{name}` |")]
    return sorted({exercise for row in rows for exercise in re.findall(r"`(ex\d+_\w+)`", row)})


def test_summary_points_to_exercises(course_notebook):
    name, notebook = course_notebook
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    for exercise in _readme_exercises(name):
        assert f"exercises/release/{exercise}" in markdown, f"{name}: the README pairs it with {exercise}, but no markdown cell points to exercises/release/{exercise}/"


def _code_statements(source: str) -> ast.Module:
    # IPython magics and shell escapes are not Python; blank them before parsing.
    python_lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return ast.parse("\n".join(python_lines))


def test_notebook_defines_no_library_logic(course_notebook):
    name, notebook = course_notebook
    classes = []
    functions = []
    for cell in _code_cells(notebook):
        for node in ast.walk(_code_statements(cell.source)):
            if isinstance(node, ast.ClassDef):
                classes.append(node.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(node.name)
    assert not classes, f"{name} defines classes {classes}; move them into the ichlab library"
    assert len(functions) <= MAX_FUNCTIONS, f"{name} defines functions {functions}; keep at most {MAX_FUNCTIONS} small helpers and move the rest into ichlab"


def test_code_cells_are_short(course_notebook):
    name, notebook = course_notebook
    long_cells = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or cell.source == course.SETUP_CELL:
            continue
        lines = [line for line in cell.source.splitlines() if line.strip()]
        if len(lines) > MAX_CODE_LINES:
            long_cells.append(f"cell {index}: {len(lines)} lines")
    assert not long_cells, f"{name} has code cells over {MAX_CODE_LINES} non-blank lines: {long_cells}"


# Stored outputs: one clean run, small, nothing machine-specific where nbval compares

def test_cells_ran_once_in_order(course_notebook):
    name, notebook = course_notebook
    counts = [cell.get("execution_count") for cell in _code_cells(notebook)]
    expected = list(range(1, len(counts) + 1))
    assert counts == expected, (
        f"{name}: execution counts {counts}; run it from a clean kernel with "
        "jupyter nbconvert --to notebook --execute --inplace (nbval skips cells without a count)"
    )


@all_notebooks
def test_stored_outputs_have_no_errors(path):
    errors = [
        f"cell {index}: {output.get('ename')}"
        for index, cell in enumerate(_read(path).cells)
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name} stores error outputs: {errors}"


@all_notebooks
def test_stored_outputs_are_small(path):
    large = []
    for index, cell in enumerate(_read(path).cells):
        for output in cell.get("outputs", []):
            size = len(json.dumps(output))
            if size > MAX_OUTPUT_BYTES:
                large.append(f"cell {index}: {size} bytes")
    assert not large, f"{path.name} stores outputs over {MAX_OUTPUT_BYTES} bytes (lower the figure dpi or size): {large}"


@all_notebooks
def test_notebook_file_is_small(path):
    size = path.stat().st_size
    assert size <= MAX_NOTEBOOK_BYTES, f"{path.name} is {size} bytes, over {MAX_NOTEBOOK_BYTES}"


@all_notebooks
def test_compared_outputs_have_no_local_paths(path):
    # nbval compares these outputs on other clones, where the checkout and data paths differ.
    local_paths = {str(REPO_ROOT), str(data_home())}
    leaks = []
    for index, cell in enumerate(_read(path).cells):
        if cell.cell_type != "code" or cell.source.startswith(IGNORE_OUTPUT_MARK):
            continue
        text = "\n".join(_output_text(output) for output in cell.get("outputs", []))
        leaks.extend(f"cell {index}: {local}" for local in local_paths if local in text)
    assert not leaks, f"{path.name}: compared outputs contain local paths; mark the cells {IGNORE_OUTPUT_MARK} or print relative paths: {leaks}"


def test_students_guide_gives_notebook_times():
    guide = STUDENTS_GUIDE.read_text(encoding="utf-8").splitlines()
    for name, (_quick, demo, full) in course.NOTEBOOKS.items():
        rows = [line for line in guide if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"docs/STUDENTS.md must have one table row for {name}, found {len(rows)}"
        assert f"| about {demo:g} min | about {full:g} min |" in rows[0], f"docs/STUDENTS.md: {name} times differ from ichlab.course.NOTEBOOKS"


def test_kernels_get_inline_figures():
    # nbval kernels inherit this process's environment. With MPLBACKEND=Agg, plt.show() outputs
    # nothing, so every stored figure becomes a missing output and the notebook fails.
    backend = os.environ.get("MPLBACKEND", "")
    assert backend in ("", "module://matplotlib_inline.backend_inline"), f"MPLBACKEND={backend!r} is set for the test run; notebook kernels would lose their figures"


# One repository URL: the setup cells, README badges and the set-repository command

@all_notebooks
def test_setup_lines_use_repository_url(path):
    lines = [line for cell in _code_cells(_read(path)) for line in cell.source.splitlines() if line.startswith("COURSE_REPOSITORY = ")]
    for line in lines:
        assert line == f'COURSE_REPOSITORY = "{course.REPOSITORY_URL}"', f"{path.name}: {line}"


def test_readme_has_badge_for_every_notebook():
    readme = README.read_text(encoding="utf-8")
    missing = [name for name in course.NOTEBOOKS if course_command.colab_url(name, course.REPOSITORY_URL) not in readme]
    assert not missing, f"README.md lacks Colab badges for {missing}; paste the output of `ichlab course badges`"


def test_readme_colab_links_use_repository_url():
    owner, repo = course_command.parse_repository_url(course.REPOSITORY_URL)
    links = re.findall(r"https://colab\.research\.google\.com/github/([^/\s)]+)/([^/\s)]+)/blob/", README.read_text(encoding="utf-8"))
    wrong = sorted({f"{link_owner}/{link_repo}" for link_owner, link_repo in links if (link_owner, link_repo) != (owner, repo)})
    assert not wrong, f"README.md has Colab links to {wrong}, not {owner}/{repo}; run `ichlab course set-repository {course.REPOSITORY_URL}`"


def test_badge_table_has_row_per_notebook():
    table = course_command.badge_table(NEW_REPOSITORY_URL)
    rows = table.splitlines()[2:]

    assert len(rows) == len(course.NOTEBOOKS)
    for row, name in zip(rows, course.NOTEBOOKS):
        assert f"https://colab.research.google.com/github/teaching-lab/ich-course/blob/main/notebooks/{name}.ipynb" in row
        assert course_command.COLAB_BADGE_IMAGE in row


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/teaching-lab/ich-course",
        "https://github.com/teaching-lab/ich-course/",
        "https://github.com/teaching-lab/ich-course.git",
        " https://github.com/teaching-lab/ich-course ",
    ],
)
def test_repository_url_is_normalised(url):
    assert course_command.normalise_repository_url(url) == NEW_REPOSITORY_URL


@pytest.mark.parametrize(
    "url",
    [
        "git@github.com:teaching-lab/ich-course.git",
        "https://gitlab.com/teaching-lab/ich-course",
        "https://github.com/teaching-lab",
        "https://github.com/teaching-lab/ich-course/tree/main",
        "http://github.com/teaching-lab/ich-course",
        'https://github.com/teaching-lab/ich"course',
    ],
)
def test_repository_url_rejects_non_github(url):
    with pytest.raises(ValueError, match="not a GitHub repository URL"):
        course_command.normalise_repository_url(url)


def _copy_repository(destination: Path) -> Path:
    """Copy the files set-repository touches, plus one extra notebook and README section that name the URL."""
    (destination / "ichlab").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "ichlab" / "course.py", destination / "ichlab" / "course.py")
    for folder in ("notebooks", "exercises", "docs"):
        if (REPO_ROOT / folder).is_dir():
            shutil.copytree(REPO_ROOT / folder, destination / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in course_command.TEXT_FILES:
        if (REPO_ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, destination / name)

    # The extra README section and notebook make the check independent of what the real ones contain today.
    with (destination / "README.md").open("a", encoding="utf-8") as readme:
        readme.write(f"\n{course_command.badge_table(course.REPOSITORY_URL)}\n\ngit clone {course.REPOSITORY_URL}.git\n")
    probe = nbformat.v4.new_notebook()
    probe.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    probe.cells = [nbformat.v4.new_markdown_cell("# 99 · Probe"), nbformat.v4.new_code_cell(course.SETUP_CELL)]
    (destination / "notebooks").mkdir(exist_ok=True)
    nbformat.write(probe, destination / "notebooks" / "99_probe.ipynb")
    return destination


def _load_course_module(path: Path):
    spec = importlib.util.spec_from_file_location("copied_course", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_set_repository(root: Path, url: str) -> int:
    parser = argparse.ArgumentParser(prog="ichlab")
    course_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["course", "set-repository", url, "--root", str(root)])
    return args.run(args)


def test_set_repository_rewrites_every_place(tmp_path, capsys):
    root = _copy_repository(tmp_path / "repo")
    originals = {path: _read(path) for path in sorted(root.glob("notebooks/*.ipynb")) + sorted(root.glob("exercises/**/*.ipynb"))}

    assert _run_set_repository(root, NEW_REPOSITORY_URL + ".git") == 0
    assert "rewrote" in capsys.readouterr().out

    copied = _load_course_module(root / "ichlab" / "course.py")
    assert copied.REPOSITORY_URL == NEW_REPOSITORY_URL
    assert f'COURSE_REPOSITORY = "{NEW_REPOSITORY_URL}"' in copied.SETUP_CELL

    for path, original in originals.items():
        rewritten = _read(path)
        for before, after in zip(original.cells, rewritten.cells):
            expected = before.source.replace(f'COURSE_REPOSITORY = "{course.REPOSITORY_URL}"', f'COURSE_REPOSITORY = "{NEW_REPOSITORY_URL}"')
            assert after.source == expected, f"{path.name}: a cell changed beyond its COURSE_REPOSITORY line"
            assert after.get("outputs") == before.get("outputs"), f"{path.name}: outputs changed"
        assert rewritten.metadata == original.metadata, f"{path.name}: metadata changed"
    for path in sorted(root.glob("notebooks/*.ipynb")):
        assert _code_cells(_read(path))[0].source == copied.SETUP_CELL, f"{path.name}: setup cell differs from the rewritten SETUP_CELL"

    readme = (root / "README.md").read_text(encoding="utf-8")
    for name in course.NOTEBOOKS:
        assert course_command.colab_url(name, NEW_REPOSITORY_URL) in readme
    assert f"git clone {NEW_REPOSITORY_URL}.git" in readme
    text_files = [root / name for name in course_command.TEXT_FILES if (root / name).is_file()]
    for path in text_files + sorted(root.glob("docs/**/*.md")):
        assert not re.search(re.escape(course.REPOSITORY_URL) + r"(?![\w-])", path.read_text(encoding="utf-8")), f"{path.name} still names {course.REPOSITORY_URL}"
        assert "colab.research.google.com/github/your-org/" not in path.read_text(encoding="utf-8")


def test_set_repository_changes_only_the_url_line(tmp_path):
    root = _copy_repository(tmp_path / "repo")
    before = (root / "ichlab" / "course.py").read_text(encoding="utf-8").splitlines()

    course_command.set_repository(root, NEW_REPOSITORY_URL)

    after = (root / "ichlab" / "course.py").read_text(encoding="utf-8").splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(after) == len(before)
    assert changed == [(f'REPOSITORY_URL = "{course.REPOSITORY_URL}"', f'REPOSITORY_URL = "{NEW_REPOSITORY_URL}"')]


def test_set_repository_twice_changes_nothing(tmp_path):
    root = _copy_repository(tmp_path / "repo")
    course_command.set_repository(root, NEW_REPOSITORY_URL)

    assert course_command.set_repository(root, NEW_REPOSITORY_URL) == []


def test_set_repository_dry_run_writes_nothing(tmp_path):
    root = _copy_repository(tmp_path / "repo")
    before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}

    changes = course_command.set_repository(root, NEW_REPOSITORY_URL, dry_run=True)

    assert changes, "a dry run must still list the files it would change"
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == before


def test_set_repository_rejects_bad_url_without_writing(tmp_path, capsys):
    root = _copy_repository(tmp_path / "repo")
    before = {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}

    assert _run_set_repository(root, "https://example.org/ich-course") == 2

    assert "not a GitHub repository URL" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in root.rglob("*") if path.is_file()} == before


def test_set_repository_outside_checkout_fails(tmp_path):
    with pytest.raises(ValueError, match="ichlab/course.py not found"):
        course_command.set_repository(tmp_path, NEW_REPOSITORY_URL)
