"""The reference results that the course compares itself with, and the side-by-side F1 table.

Source of the reference values: Gabriel Forsberg, Chalmers University of Technology, poster
"EfficientNet Sequence Model for DICOM-Based Intracranial Hemorrhage Detection": per-class
F1 on the test split of a 1000-patient RSNA 2019 subset (50,863 slices) for the 2D, 2.5D
and LSTM paths, and the positive slices per subtype in that subset. The values are stored
in ``ichlab/reference_f1.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ichlab import SUBTYPES

REFERENCE_SOURCE = (
    "Gabriel Forsberg, Chalmers University of Technology, poster \"EfficientNet Sequence Model "
    "for DICOM-Based Intracranial Hemorrhage Detection\""
)
REFERENCE_PATIENTS = 1000
REFERENCE_SLICES = 50_863
REFERENCE_MODELS = ("2D", "2.5D", "LSTM")


def _read_reference() -> pd.DataFrame:
    with resources.files("ichlab").joinpath("reference_f1.csv").open() as handle:
        table = pd.read_csv(handle, comment="#", index_col="subtype")
    if tuple(table.index) != SUBTYPES:
        raise RuntimeError(f"reference_f1.csv lists {tuple(table.index)}, expected {SUBTYPES}")
    return table


_REFERENCE = _read_reference()

# Per-class test F1 of the reference: index SUBTYPES, columns 2D, 2.5D, LSTM.
REFERENCE_F1 = _REFERENCE[list(REFERENCE_MODELS)].astype(float)

# Positive slices per subtype in the reference subset.
REFERENCE_SLICE_COUNTS = {subtype: int(count) for subtype, count in _REFERENCE["positive_slices"].items()}

# Column titles of known model names; ``ichlab.pipeline`` keys results by these titles.
MODEL_TITLES = {"2d": "2D", "2.5d": "2.5D", "lstm": "LSTM", "series": "series"}


def _format_cell(value: float, low: float, high: float, digits: int) -> str:
    if np.isnan(value):
        return "undefined"
    if np.isnan(low) or np.isnan(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def f1_table(
    results: Mapping[str, pd.DataFrame],
    *,
    reference: bool = True,
    metric: str = "f1",
    macro: bool = False,
    digits: int = 2,
) -> pd.DataFrame:
    """Lay out per-class F1 of several models beside the reference values.

    Parameters
    ----------
    results
        Model name (``"2d"``, ``"2.5d"``, ``"lstm"``, ``"series"`` or a column title such as
        ``"2D"``) to the table that ``ichlab.metrics.evaluate`` returns.
    reference
        Add the reference F1 as columns ``reference 2D``, ``reference 2.5D``, ``reference LSTM``.
    metric
        The metric to show, with its ``_lo`` and ``_hi`` interval columns (``"f1"`` is F1 at
        the threshold tuned on validation; ``"f1_at_0.5"`` is another choice).
    macro
        Add the macro row, labelled with how many classes its mean includes.

    Returns
    -------
    pandas.DataFrame
        Strings "F1 [lo, hi]"; rows the subtypes, columns 2D, 2.5D, LSTM, then other models
        in the order given. A class without a positive slice in the test split reads
        "undefined".
    """
    titles = {name: MODEL_TITLES.get(name, name) for name in results}
    known = [title for title in MODEL_TITLES.values() if title in titles.values()]
    order = known + [title for title in titles.values() if title not in known]
    by_title = {titles[name]: frame for name, frame in results.items()}

    rows = list(SUBTYPES) + (["macro"] if macro else [])
    table = pd.DataFrame(index=pd.Index(rows, name="subtype"))
    for title in order:
        frame = by_title[title]
        missing = [row for row in rows if row not in frame.index]
        if missing:
            raise ValueError(f"results for {title} have no row for {', '.join(missing)}; pass ichlab.metrics.evaluate output")
        table[title] = [
            _format_cell(frame.at[row, metric], frame.at[row, f"{metric}_lo"], frame.at[row, f"{metric}_hi"], digits)
            for row in rows
        ]
    if macro:
        n_classes = {int(by_title[title].at["macro", "n_classes"]) for title in order}
        label = f"macro ({'/'.join(str(n) for n in sorted(n_classes))} of {len(SUBTYPES)} classes)"
        table = table.rename(index={"macro": label})
    if reference:
        for model in REFERENCE_MODELS:
            values = [f"{REFERENCE_F1.at[row, model]:.2f}" if row in SUBTYPES else "" for row in rows]
            table[f"reference {model}"] = values
    return table


def table_to_markdown(table: pd.DataFrame) -> str:
    """Render a table as a GitHub Markdown pipe table, index first; no trailing newline."""

    def escape(value: object) -> str:
        return str(value).replace("|", "\\|")

    header = [table.index.name or ""] + [escape(column) for column in table.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for label, row in table.iterrows():
        lines.append("| " + " | ".join([escape(label)] + [escape(value) for value in row]) + " |")
    return "\n".join(lines)


def write_f1_table(table: pd.DataFrame, out_dir: Path, stem: str = "f1_table") -> tuple[Path, Path]:
    """Write ``table`` as ``<stem>.md`` and ``<stem>.csv`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown_path = out_dir / f"{stem}.md"
    csv_path = out_dir / f"{stem}.csv"
    markdown_path.write_text(table_to_markdown(table) + "\n")
    table.to_csv(csv_path)
    return markdown_path, csv_path


def simulate_predictions(
    n_patients: int = 200,
    *,
    slices_per_patient: int = 50,
    separation: float = 3.0,
    seed: int = 0,
    model_seed: int = 0,
    positive_fraction: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Generate a prediction table with lesions clustered in patients, for teaching and tests.

    Each subtype's lesions span runs of 3 to 12 neighbouring slices in a few patients, so
    that on average the positive slices make up ``positive_fraction`` (default: the
    reference subset's fractions, epidural about 0.5%). A slice's logit is
    ``separation * label + patient effect + noise`` with standard-normal noise.

    Parameters
    ----------
    seed
        Fixes the patients and labels.
    model_seed
        Fixes the prediction noise: two values give two equally good models on the same labels.

    Returns
    -------
    pandas.DataFrame
        A prediction table (``ichlab.metrics`` column layout).
    """
    fractions = positive_fraction or {
        subtype: count / REFERENCE_SLICES for subtype, count in REFERENCE_SLICE_COUNTS.items()
    }
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), slices_per_patient)  # (N,)
    slice_index = np.tile(np.arange(slices_per_patient), n_patients)  # (N,)
    labels = np.zeros((len(patient), len(SUBTYPES)), dtype=np.int8)  # (N, 5)
    for column, subtype in enumerate(SUBTYPES):
        run_lengths = rng.integers(3, 13, size=n_patients)
        affected = rng.random(n_patients) < fractions[subtype] * slices_per_patient / 7.5
        starts = rng.integers(0, slices_per_patient - run_lengths + 1)
        for k in np.flatnonzero(affected):
            rows = k * slices_per_patient + starts[k] + np.arange(run_lengths[k])
            labels[rows, column] = 1

    noise_rng = np.random.default_rng([seed, model_seed])
    patient_effect = noise_rng.normal(0.0, 0.5, size=(n_patients, len(SUBTYPES)))[patient]  # (N, 5)
    logits = separation * labels + patient_effect + noise_rng.normal(size=labels.shape) - 4.0  # (N, 5)
    probabilities = 1.0 / (1.0 + np.exp(-logits))

    table = pd.DataFrame(
        {
            "image_id": [f"ID_sim{p:05d}{s:03d}" for p, s in zip(patient, slice_index)],
            "patient_id": [f"ID_patient{p:05d}" for p in patient],
            "series_uid": [f"1.2.826.0.1.3680043.8.498.{p + 1}" for p in patient],
            "slice_index": slice_index,
        }
    )
    for column, subtype in enumerate(SUBTYPES):
        table[f"prob_{subtype}"] = probabilities[:, column]
    for column, subtype in enumerate(SUBTYPES):
        table[subtype] = labels[:, column].astype(int)
    return table
