"""The RSNA 2019 label CSV, the Kaggle folder layout and the patient subset of the course.

The competition's ``stage_2_train.csv`` has one row per image and subtype
(``ID_63eb1e259_epidural,0``). :func:`read_labels` turns it into one row per image,
:func:`attach_labels` joins those rows to a header table, and :func:`select_subset` picks a
stratified set of patients so that every subtype is present, as in the reference subset.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ichlab import LABEL_COLUMNS, SUBTYPES

logger = logging.getLogger(__name__)

# Slice counts per subtype of the poster's 1000-patient subset (50,863 slices), from
# G. Forsberg, "EfficientNet Sequence Model for DICOM-Based Intracranial Hemorrhage Detection".
REFERENCE_SUBSET = {"patients": 1000, "slices": 50863}
REFERENCE_SLICE_COUNTS = {
    "epidural": 240,
    "intraparenchymal": 2853,
    "intraventricular": 1962,
    "subarachnoid": 2627,
    "subdural": 3180,
}

# Folder and label file names of the Kaggle download, newest stage first.
KAGGLE_LAYOUTS = (
    ("stage_2_train", "stage_2_train.csv"),
    ("stage_2_train_images", "stage_2_train.csv"),
    ("stage_1_train_images", "stage_1_train.csv"),
)
KAGGLE_FOLDER = "rsna-intracranial-hemorrhage-detection"

_IMAGE_ID = re.compile(r"^ID_\S+$")


class LabelError(ValueError):
    """A label CSV row that cannot be read; the message names the file, the line and the row."""


def read_labels(csv_path: str | Path) -> pd.DataFrame:
    """Read an RSNA label CSV into one row per image.

    Each ``ID`` is split once from the right, so ``ID_63eb1e259_epidural`` is image
    ``ID_63eb1e259`` and subtype ``epidural``. Rows that repeat another row exactly are
    dropped; their count is logged and stored in ``labels.attrs["duplicates_dropped"]``.

    Parameters
    ----------
    csv_path
        A CSV with the columns ``ID`` and ``Label`` (``stage_2_train.csv`` of the Kaggle
        download, or the file written beside a generated dataset).

    Returns
    -------
    pandas.DataFrame
        Index ``image_id`` in the order of first appearance, int64 columns
        ``ichlab.LABEL_COLUMNS`` (the five subtypes, then ``any``), each 0 or 1.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    LabelError
        If a column is missing, an id is malformed, a subtype is unknown, a label is not 0
        or 1, the same image and subtype appear with different labels, or an image lacks a
        subtype. The message names the line (1 is the header) and the row.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"label CSV not found: {csv_path}")
    rows = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [column for column in ("ID", "Label") if column not in rows.columns]
    if missing:
        raise LabelError(
            f"{csv_path.name}: missing column(s) {', '.join(missing)}; found {list(rows.columns)}, "
            "expected ID,Label as in stage_2_train.csv"
        )
    ids = rows["ID"].str.strip()
    text_labels = rows["Label"].str.strip()
    line_numbers = np.arange(len(rows)) + 2  # line 1 is the header

    # "ID_63eb1e259_epidural" -> ("ID_63eb1e259", "epidural"): image ids contain underscores.
    parts = ids.str.rsplit("_", n=1, expand=True)
    if parts.shape[1] < 2:
        parts = pd.DataFrame({0: ids, 1: pd.Series([None] * len(ids), dtype=object)})
    image_ids = parts[0]
    subtypes = parts[1]

    malformed = ~image_ids.str.match(_IMAGE_ID).fillna(False).astype(bool) | subtypes.isna()
    _raise_at_first(malformed, csv_path, line_numbers, rows, "malformed id, expected ID_<image>_<subtype>")
    unknown = ~subtypes.isin(LABEL_COLUMNS)
    _raise_at_first(unknown, csv_path, line_numbers, rows, f"unknown subtype, expected one of {', '.join(LABEL_COLUMNS)}")
    invalid = ~text_labels.isin(["0", "1"])
    _raise_at_first(invalid, csv_path, line_numbers, rows, "label is not 0 or 1")

    table = pd.DataFrame(
        {
            "image_id": image_ids.to_numpy(),
            "subtype": subtypes.to_numpy(),
            "label": text_labels.astype("int64").to_numpy(),
            "line": line_numbers,
        }
    )

    exact_repeat = table.duplicated(subset=["image_id", "subtype", "label"], keep="first")
    n_duplicates = int(exact_repeat.sum())
    if n_duplicates:
        logger.warning("%s: dropped %d row(s) that repeat an earlier row exactly", csv_path.name, n_duplicates)
    table = table[~exact_repeat]

    conflicting = table.duplicated(subset=["image_id", "subtype"], keep=False)
    if conflicting.any():
        first = table[conflicting].iloc[0]
        clash = table[conflicting & (table["image_id"] == first["image_id"]) & (table["subtype"] == first["subtype"])]
        lines = ", ".join(str(line) for line in clash["line"])
        raise LabelError(
            f"{csv_path.name}: lines {lines} give {first['image_id']}_{first['subtype']} different labels "
            f"({', '.join(str(label) for label in clash['label'])}); fix or remove the wrong row"
        )

    labels = table.pivot(index="image_id", columns="subtype", values="label")
    image_order = pd.unique(table["image_id"])
    labels = labels.reindex(index=image_order, columns=list(LABEL_COLUMNS))
    incomplete = labels.isna().any(axis=1)
    if incomplete.any():
        image_id = labels.index[incomplete][0]
        absent = [column for column in LABEL_COLUMNS if pd.isna(labels.at[image_id, column])]
        raise LabelError(
            f"{csv_path.name}: image {image_id} has no row for subtype(s) {', '.join(absent)}; "
            f"{int(incomplete.sum())} image(s) are incomplete"
        )
    labels = labels.astype("int64")
    labels.index.name = "image_id"
    labels.columns.name = None

    inconsistent = labels["any"] != labels[list(SUBTYPES)].max(axis=1)
    if inconsistent.any():
        logger.warning(
            "%s: %d image(s) have an 'any' label that differs from the union of the subtypes, e.g. %s",
            csv_path.name,
            int(inconsistent.sum()),
            labels.index[inconsistent][0],
        )
    labels.attrs["duplicates_dropped"] = n_duplicates
    return labels


def _raise_at_first(bad: pd.Series, csv_path: Path, line_numbers: np.ndarray, rows: pd.DataFrame, problem: str) -> None:
    if not bad.any():
        return
    position = int(np.flatnonzero(bad.to_numpy())[0])
    row = f"{rows['ID'].iloc[position]},{rows['Label'].iloc[position]}"
    raise LabelError(f"{csv_path.name}: line {line_numbers[position]} ({row!r}): {problem}; {int(bad.sum())} row(s) affected")


def find_layout(root: str | Path) -> tuple[Path, Path]:
    """Find the DICOM folder and the label CSV of a Kaggle-layout dataset.

    ``root`` may be the competition folder itself, or a folder holding
    ``rsna-intracranial-hemorrhage-detection/`` (once or twice nested, as the Kaggle zip
    and Kaggle notebooks with the data attached have it). Generated datasets use the same
    layout.

    Returns
    -------
    (dicom_dir, labels_csv)
        For example ``root/stage_2_train`` and ``root/stage_2_train.csv``.

    Raises
    ------
    FileNotFoundError
        If no known layout is found; the message lists what was expected.
    """
    root = Path(root).expanduser()
    candidates = [root, root / KAGGLE_FOLDER, root / KAGGLE_FOLDER / KAGGLE_FOLDER]
    for folder in candidates:
        for dicom_name, csv_name in KAGGLE_LAYOUTS:
            dicom_dir = folder / dicom_name
            labels_csv = folder / csv_name
            if dicom_dir.is_dir() and labels_csv.is_file():
                return dicom_dir, labels_csv
    expected = " or ".join(f"{dicom_name}/ with {csv_name}" for dicom_name, csv_name in KAGGLE_LAYOUTS[::2])
    found = sorted(path.name for path in root.iterdir())[:10] if root.is_dir() else "the folder does not exist"
    raise FileNotFoundError(
        f"no RSNA layout in {root}: expected {expected} (optionally inside {KAGGLE_FOLDER}/); found {found}. "
        "Download the competition data from Kaggle (see data/README.md) or set ICHLAB_RSNA_ROOT"
    )


def attach_labels(headers: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join label rows to a header table, by file stem first and SOPInstanceUID second.

    Parameters
    ----------
    headers
        A header or ordered table with ``file``, ``image_id`` (file stem) and ``sop_uid``.
    labels
        The table from :func:`read_labels`.

    Returns
    -------
    (table, unlabelled)
        ``table`` is ``headers`` with the label columns added (int64), restricted to the
        rows that have labels, in the original order; its ``image_id`` is the label's id.
        ``unlabelled`` has ``file`` and ``reason`` for each header row without a label row.
    """
    by_stem = headers["image_id"].isin(labels.index)
    by_sop = ~by_stem & headers["sop_uid"].astype(str).isin(labels.index)
    label_ids = headers["image_id"].where(by_stem, headers["sop_uid"].astype(str))
    matched = by_stem | by_sop

    table = headers[matched].copy()
    table["image_id"] = label_ids[matched].to_numpy()
    label_values = labels.loc[table["image_id"], list(LABEL_COLUMNS)].to_numpy()
    for position, column in enumerate(LABEL_COLUMNS):
        table[column] = label_values[:, position].astype("int64")

    unlabelled = pd.DataFrame(
        {"file": headers.loc[~matched, "file"].astype(str).to_numpy(), "reason": "no row in the label CSV"}
    )
    if len(unlabelled):
        logger.warning("%d of %d DICOM files have no label row and are left out", len(unlabelled), len(headers))
    return table.reset_index(drop=True), unlabelled


def select_subset(table: pd.DataFrame, n_patients: int, seed: int = 0) -> pd.DataFrame:
    """Select ``n_patients`` patients, stratified so that every subtype stays present.

    Patients are grouped by their rarest subtype (by patient count; ``none`` for patients
    without hemorrhage). Each group gets a share of ``n_patients`` proportional to its size
    by the largest-remainder method, with at least one patient for every group that has a
    subtype, and the patients of a group are drawn at random from ``seed``.

    Parameters
    ----------
    table
        One row per slice with ``patient_id`` (DICOM PatientID, not the study) and the
        subtype columns, for example from :func:`attach_labels`.
    n_patients
        Patients to keep. All patients are kept, with a warning, when there are fewer.
    seed
        Seed of the random draw; the same table and seed give the same subset.

    Returns
    -------
    pandas.DataFrame
        The rows of ``table`` that belong to the chosen patients, in the original order.
        :func:`format_slice_counts` describes it the way the reference subset is described.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be at least 1, got {n_patients}")
    presence = table.groupby("patient_id", sort=True)[list(SUBTYPES)].max()
    if n_patients >= len(presence):
        if n_patients > len(presence):
            logger.warning("only %d patients available, fewer than the %d requested; keeping all", len(presence), n_patients)
        return table.copy()

    group = patient_groups(presence)
    sizes = group.value_counts()
    shares = sizes / sizes.sum() * n_patients
    quotas = np.floor(shares).astype(int)
    remainders = (shares - quotas).sort_values(ascending=False, kind="stable")
    for name in remainders.index[: n_patients - int(quotas.sum())]:
        quotas[name] += 1
    for name in sizes.index:
        if name != "none" and quotas[name] == 0:
            donor = quotas.idxmax()
            if quotas[donor] > 1:
                quotas[donor] -= 1
                quotas[name] += 1
            else:
                logger.warning("%d patients are too few to include a patient with %s", n_patients, name)

    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for name in sorted(sizes.index):
        members = group.index[group == name].to_numpy()
        chosen.extend(rng.permutation(members)[: quotas[name]].tolist())

    subset = table[table["patient_id"].isin(chosen)].copy()
    logger.info("subset: %s", format_slice_counts(subset))
    return subset


def patient_groups(presence: pd.DataFrame) -> pd.Series:
    """Return each patient's rarest present subtype, or ``"none"``.

    ``presence`` has one row per patient and 0/1 subtype columns; rarity is the number of
    patients with the subtype, ties broken in RSNA column order.
    """
    counts = presence[list(SUBTYPES)].sum()
    rarity = sorted(SUBTYPES, key=lambda name: (counts[name], SUBTYPES.index(name)))
    group = pd.Series("none", index=presence.index, dtype=object)
    for name in reversed(rarity):  # rarer subtypes overwrite commoner ones
        group[presence[name] > 0] = name
    return group


def slice_counts(table: pd.DataFrame) -> pd.Series:
    """Return the number of positive slices per subtype, in RSNA order."""
    return table[list(SUBTYPES)].sum().astype("int64")


def format_slice_counts(table: pd.DataFrame) -> str:
    """Describe a slice table the way the reference subset is described.

    For example ``1000 patients, 50,863 slices: epidural 240, intraparenchymal 2853, ...``.
    """
    counts = slice_counts(table)
    per_subtype = ", ".join(f"{name} {counts[name]}" for name in SUBTYPES)
    return f"{table['patient_id'].nunique()} patients, {len(table):,} slices: {per_subtype}"
