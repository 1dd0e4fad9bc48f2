"""``ichlab grade``: autograde exercise submissions with nbgrader and write a CSV gradebook."""

from __future__ import annotations

import argparse
from pathlib import Path

from ichlab.commands import HelpFormatter, positive_int, report_error


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "grade",
        help="grade exercise submissions with nbgrader (collect, autograde, feedback, CSV gradebook)",
        description=(
            "Run nbgrader's collect (zip_collect for learning-platform downloads), autograde, "
            "generate_feedback and export steps in the course folder. The ichlab modules that "
            "implement an exercise's answer cannot be imported while it is graded. With --release, "
            "only regenerate the student versions release/<assignment>/ from source/<assignment>/."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--course",
        type=Path,
        default=None,
        help="course folder holding nbgrader_config.py and source/ (default: exercises/ of this checkout)",
    )
    parser.add_argument(
        "--submissions",
        type=Path,
        default=None,
        help=(
            "a zip file or folder of downloads named <student id>_..._<notebook>.ipynb, or a folder in "
            "nbgrader's <student>/<assignment>/ layout; omit it to grade what is in the course's submitted/"
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("gradebook.csv"), help="CSV gradebook to write")
    parser.add_argument(
        "--assignment",
        action="append",
        default=None,
        help="grade (or release) only this assignment; repeat for several (default: all with submissions)",
    )
    parser.add_argument("--timeout", type=positive_int, default=60, help="per-cell execution limit in seconds")
    parser.add_argument("--no-feedback", action="store_true", help="skip the HTML feedback files")
    parser.add_argument(
        "--allow-library-answers",
        action="store_true",
        help="let submissions import the ichlab modules that implement the exercise (blocked by default)",
    )
    parser.add_argument(
        "--name-pattern",
        default=None,
        help=(
            "regular expression for downloaded file names with groups student_id and file_id; "
            "{notebook} stands for the assignment's notebook name"
        ),
    )
    parser.add_argument("--release", action="store_true", help="regenerate release/ from source/ and exit")
    parser.set_defaults(run=run)


def run(args) -> int:
    import logging

    from ichlab import grading

    # nbgrader logs every file it writes through the traitlets logger; keep its warnings and errors.
    if not getattr(args, "verbose", False):
        logging.getLogger("traitlets").setLevel(logging.WARNING)
    course = args.course or grading.default_course_dir()
    try:
        if args.release:
            released = grading.release(course, args.assignment)
            for path in released:
                print(f"released {path}")
            return 0
        report = grading.grade_class(
            course,
            args.submissions,
            args.out,
            assignments=args.assignment,
            timeout_s=args.timeout,
            feedback=not args.no_feedback,
            block_library_answers=not args.allow_library_answers,
            name_pattern=args.name_pattern or grading.DEFAULT_NAME_PATTERN,
        )
    except grading.GradingError as error:
        return report_error(error, args, status=1)

    summary = report.scores.groupby("assignment")["score"].agg(["count", "mean", "min", "max"])
    print(summary.to_string(float_format=lambda value: f"{value:.1f}"))
    if report.skipped_files:
        print(f"skipped {len(report.skipped_files)} downloaded notebooks whose names match no student and assignment:")
        for name in report.skipped_files:
            print(f"  {name}")
    for assignment, students in report.failed.items():
        print(f"could not grade {assignment} for {len(students)} students (unreadable notebooks?): {', '.join(students)}")
    print(f"gradebook: {report.gradebook_csv}")
    if report.feedback_dir is not None:
        print(f"feedback: {report.feedback_dir}/<student>/<assignment>/<notebook>.html")
    return 0
