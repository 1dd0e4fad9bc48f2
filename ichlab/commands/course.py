"""``ichlab course``: publish the course under one repository URL and print its Colab badges.

The repository URL lives in one place, ``REPOSITORY_URL`` in ``ichlab/course.py``.
``ichlab course set-repository URL`` rewrites that line, the ``COURSE_REPOSITORY = "..."``
line of every notebook's setup cell, and every repository and Colab link in the guides and
project metadata, so a publishing instructor changes the URL everywhere with one command.
``ichlab course badges`` prints the README's table of "Open in Colab" badges.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

COURSE_MODULE = Path("ichlab") / "course.py"
NOTEBOOK_FOLDERS = ("notebooks", "exercises")
# Text files whose repository and Colab links are rewritten: these files, and Markdown under these folders.
TEXT_FILES = ("README.md", "CITATION.cff", "pyproject.toml", "data/README.md")
TEXT_FOLDERS = ("docs",)

COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
COLAB_BRANCH = "main"

_GITHUB_URL = re.compile(r"^https://github\.com/(?P<owner>[A-Za-z0-9-]+)/(?P<repo>[A-Za-z0-9._-]+?)(?:\.git)?/?$")
_REPOSITORY_LINE = re.compile(r'^REPOSITORY_URL = "(?P<url>[^"\n]*)"$', re.MULTILINE)
_SETUP_LINE = re.compile(r'^COURSE_REPOSITORY = "[^"\n]*"$', re.MULTILINE)
# A Colab link to a notebook on GitHub. The badge image under /assets/ does not match.
_COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)\"'>]+/[^/\s)\"'>]+/blob/")


def parse_repository_url(url: str) -> tuple[str, str]:
    """Split a GitHub repository URL into its owner and repository name.

    Parameters
    ----------
    url
        ``https://github.com/<owner>/<repo>``, optionally ending in ``.git`` or ``/``.

    Returns
    -------
    (owner, repo)

    Raises
    ------
    ValueError
        If ``url`` is not a GitHub repository URL, because Colab badges open notebooks from GitHub only.
    """
    match = _GITHUB_URL.match(url.strip())
    if match is None:
        raise ValueError(
            f"{url!r} is not a GitHub repository URL; pass one like https://github.com/OWNER/REPO "
            "(Colab badges open notebooks from GitHub only)"
        )
    return match["owner"], match["repo"]


def normalise_repository_url(url: str) -> str:
    """Return ``url`` as ``https://github.com/<owner>/<repo>``, without ``.git`` or a trailing slash."""
    owner, repo = parse_repository_url(url)
    return f"https://github.com/{owner}/{repo}"


def colab_url(notebook: str, repository_url: str) -> str:
    """Return the Colab address that opens ``notebooks/<notebook>.ipynb`` of the repository's main branch."""
    owner, repo = parse_repository_url(repository_url)
    return f"https://colab.research.google.com/github/{owner}/{repo}/blob/{COLAB_BRANCH}/notebooks/{notebook}.ipynb"


def badge_table(repository_url: str, notebooks: dict[str, tuple[float, float, float]] | None = None) -> str:
    """Return the README's Markdown table with one "Open in Colab" badge per course notebook.

    Parameters
    ----------
    repository_url
        The GitHub repository the badges open.
    notebooks
        Notebook name to minutes in (quick, demo, full) mode; default ``ichlab.course.NOTEBOOKS``.
    """
    if notebooks is None:
        from ichlab.course import NOTEBOOKS

        notebooks = NOTEBOOKS
    lines = [
        "| notebook | open | demo mode, 2 CPU cores | full mode, one GPU |",
        "| --- | --- | --- | --- |",
    ]
    for name, (_quick, demo, full) in notebooks.items():
        badge = f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(name, repository_url)})"
        lines.append(f"| `{name}` | {badge} | about {demo:g} min | about {full:g} min |")
    return "\n".join(lines)


@dataclass
class FileChange:
    """One file that ``set_repository`` rewrites, with its new text and how many places changed."""

    path: Path
    text: str
    replacements: int


def _course_module_change(root: Path, url: str) -> tuple[FileChange, str]:
    path = root / COURSE_MODULE
    if not path.is_file():
        raise ValueError(f"{path} not found; run the command from the repository root or pass --root")
    text = path.read_text(encoding="utf-8")
    matches = list(_REPOSITORY_LINE.finditer(text))
    if len(matches) != 1:
        raise ValueError(f'{path} must contain exactly one line REPOSITORY_URL = "...", found {len(matches)}')
    old_url = matches[0]["url"]
    new_text = _REPOSITORY_LINE.sub(f'REPOSITORY_URL = "{url}"', text)
    return FileChange(path, new_text, 1), old_url


def _notebook_change(path: Path, url: str) -> FileChange | None:
    import nbformat

    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    replacements = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        source, count = _SETUP_LINE.subn(f'COURSE_REPOSITORY = "{url}"', cell.source)
        if count and source != cell.source:
            cell.source = source
            replacements += count
    if replacements == 0:
        return None
    text = nbformat.writes(notebook)
    if not text.endswith("\n"):
        text += "\n"  # as nbformat.write ends a file
    return FileChange(path, text, replacements)


def _text_change(path: Path, old_url: str, url: str) -> FileChange | None:
    owner, repo = parse_repository_url(url)
    text = path.read_text(encoding="utf-8")
    new_text, colab_count = _COLAB_LINK.subn(f"https://colab.research.google.com/github/{owner}/{repo}/blob/", text)
    # The old URL as a whole word: "https://github.com/a/ichlab" must not match inside ".../a/ichlab-2".
    new_text, url_count = re.subn(re.escape(old_url) + r"(?![\w-])", url, new_text)
    if new_text == text:
        return None
    return FileChange(path, new_text, colab_count + url_count)


def _notebook_paths(root: Path) -> list[Path]:
    paths = []
    for folder in NOTEBOOK_FOLDERS:
        for path in sorted((root / folder).rglob("*.ipynb")):
            if ".ipynb_checkpoints" not in path.parts:
                paths.append(path)
    return paths


def _text_paths(root: Path) -> list[Path]:
    paths = [root / name for name in TEXT_FILES if (root / name).is_file()]
    for folder in TEXT_FOLDERS:
        paths.extend(sorted((root / folder).rglob("*.md")))
    return paths


def set_repository(root: Path, url: str, dry_run: bool = False) -> list[FileChange]:
    """Point the course at another GitHub repository, rewriting every file that names it.

    Rewrites the ``REPOSITORY_URL`` line of ``ichlab/course.py``, the ``COURSE_REPOSITORY``
    line of every notebook under ``notebooks/`` and ``exercises/``, and every Colab notebook
    link and every occurrence of the previous URL in ``README.md``, ``docs/**/*.md``,
    ``data/README.md``, ``CITATION.cff`` and ``pyproject.toml``.
    All new texts are built before the first file is written, so an error leaves every
    file as it was.

    Parameters
    ----------
    root
        The repository checkout (the folder holding ``ichlab/``, ``notebooks/`` and the README).
    url
        The new GitHub repository URL; it is stored as ``https://github.com/<owner>/<repo>``.
    dry_run
        Compute the changes without writing them.

    Returns
    -------
    list of FileChange
        The files that changed (or would change), course module first.

    Raises
    ------
    ValueError
        If ``url`` is not a GitHub repository URL, or ``root`` contains no ``ichlab/course.py``
        with exactly one ``REPOSITORY_URL`` line.
    """
    url = normalise_repository_url(url)
    root = Path(root)
    course_change, old_url = _course_module_change(root, url)

    changes = [course_change] if course_change.text != course_change.path.read_text(encoding="utf-8") else []
    for path in _notebook_paths(root):
        change = _notebook_change(path, url)
        if change is not None:
            changes.append(change)
    for path in _text_paths(root):
        change = _text_change(path, old_url, url)
        if change is not None:
            changes.append(change)

    if not dry_run:
        for change in changes:
            change.path.write_text(change.text, encoding="utf-8")
    return changes


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "course",
        help="publish the course: set its repository URL, print the README's Colab badges",
        description="Tools for the instructor who publishes the course notebooks on GitHub and Colab.",
    )
    actions = parser.add_subparsers(dest="course_command", metavar="ACTION")

    set_parser = actions.add_parser(
        "set-repository",
        help="rewrite the repository URL in ichlab/course.py, every notebook's setup cell and the README",
        description=(
            "Replace the course repository URL everywhere it appears: the REPOSITORY_URL line of "
            "ichlab/course.py, the COURSE_REPOSITORY line of each notebook's setup cell, and the Colab "
            "badges and repository links in README.md, docs/, data/README.md, CITATION.cff and pyproject.toml."
        ),
    )
    set_parser.add_argument("url", help="the GitHub repository, for example https://github.com/my-org/ichlab")
    set_parser.add_argument(
        "--root",
        type=Path,
        default=Path.cwd(),
        help="repository checkout to rewrite (default: the current folder)",
    )
    set_parser.add_argument("--dry-run", action="store_true", help="list the files that would change without writing them")
    set_parser.set_defaults(run=run_set_repository)

    badges_parser = actions.add_parser(
        "badges",
        help="print the Markdown table of Open in Colab badges for the README",
        description="Print one 'Open in Colab' badge per course notebook, with its run time in demo and full mode.",
    )
    badges_parser.add_argument(
        "--url",
        default=None,
        help="GitHub repository the badges open (default: ichlab.course.REPOSITORY_URL)",
    )
    badges_parser.set_defaults(run=run_badges)

    parser.set_defaults(run=run, course_parser=parser)


def run(args) -> int:
    """Print the ``course`` help when no action is given."""
    args.course_parser.print_help()
    return 2


def run_set_repository(args) -> int:
    """Run ``ichlab course set-repository``."""
    try:
        changes = set_repository(args.root, args.url, dry_run=args.dry_run)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    verb = "would rewrite" if args.dry_run else "rewrote"
    root = Path(args.root).resolve()
    for change in changes:
        places = "place" if change.replacements == 1 else "places"
        print(f"{verb} {change.path.resolve().relative_to(root)} ({change.replacements} {places})")
    print(f"{verb} {len(changes)} files for {normalise_repository_url(args.url)}")
    return 0


def run_badges(args) -> int:
    """Run ``ichlab course badges``."""
    from ichlab.course import REPOSITORY_URL

    try:
        print(badge_table(args.url or REPOSITORY_URL))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
