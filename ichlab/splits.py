"""Patient-level train, validation and test splits, stratified by subtype presence.

Slices of one patient are strongly correlated, so every split is made over patients: a
patient's series, and therefore all of its slices, land in exactly one split.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ichlab import SUBTYPES
from ichlab.rsna import patient_groups

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# Draws tried before accepting a split that leaves a subtype out of some split.
MAX_ATTEMPTS = 100


def split_patients(
    table: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> pd.Series:
    """Assign every patient to ``"train"``, ``"val"`` or ``"test"``.

    Patients are grouped by their rarest present subtype (``none`` without hemorrhage),
    shuffled within each group from ``seed``, and the groups are laid end to end, rarest
    first. If that draw leaves a subtype with at least three positive patients out of a
    split, unstratified draws from the same seed are tried (up to ``MAX_ATTEMPTS``) until
    one covers every such subtype in every split. Walking that list, each patient goes to the split that is furthest behind its
    target count (``fraction * patients seen so far``). Split sizes therefore match the
    fractions to within one patient overall, and each group is spread over the splits in
    proportion as far as its size allows.

    Parameters
    ----------
    table
        One row per slice (or per patient) with ``patient_id`` and the five subtype
        columns. A patient has a subtype if any of its rows has it.
    fractions
        Train, validation and test shares of the patients; non-negative, summing to 1.
    seed
        The same table and seed always give the same split.

    Returns
    -------
    pandas.Series
        Index ``patient_id`` (sorted), values ``"train"``, ``"val"`` or ``"test"``.

    Raises
    ------
    ValueError
        If ``fractions`` are invalid, or a column or a patient id is missing.
    """
    fractions = _check_fractions(fractions)
    missing = [column for column in ("patient_id", *SUBTYPES) if column not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {', '.join(missing)} needed to split by patient")
    if table["patient_id"].isna().any():
        raise ValueError(f"{int(table['patient_id'].isna().sum())} row(s) have no patient_id; every slice needs its DICOM PatientID")

    presence = table.groupby("patient_id", sort=True)[list(SUBTYPES)].max()
    group = patient_groups(presence)
    counts = presence.sum()
    group_order = sorted(set(group), key=lambda name: (name == "none", counts.get(name, 0), name))

    # A draw can leave a subtype out of a split although it has enough patients for all three.
    # Later draws then come from the same generator, so the result stays deterministic.
    coverable = [subtype for subtype in SUBTYPES if counts[subtype] >= np.count_nonzero(fractions)]
    rng = np.random.default_rng(seed)
    for attempt in range(MAX_ATTEMPTS):
        # The first draw is stratified by group. Later ones shuffle all patients together, because
        # reshuffling inside the groups never changes how many of a group each split gets.
        if attempt == 0:
            assignment = _allocate(group, group_order, fractions, rng)
        else:
            assignment = _allocate(pd.Series("all", index=group.index), ["all"], fractions, rng)
        uncovered = _uncovered_subtypes(presence, assignment, coverable, fractions)
        if not uncovered:
            break
    else:
        logger.warning(
            "no split of %d draws puts every subtype in every split; %s stay uncovered",
            MAX_ATTEMPTS, ", ".join(uncovered),
        )
    if attempt:
        logger.info("split draw %d is the first with every subtype in every split", attempt + 1)

    split = pd.Series(assignment, name="split").sort_index()
    split.index.name = "patient_id"
    logger.info("split %d patients: %s", len(split), split.value_counts().reindex(SPLITS, fill_value=0).to_dict())
    return split


def _allocate(group: pd.Series, group_order: list, fractions: np.ndarray, rng: np.random.Generator) -> dict:
    ordered_patients: list = []
    for name in group_order:
        members = group.index[group == name].to_numpy()
        ordered_patients.extend(rng.permutation(members).tolist())

    # Largest-deficit allocation along the list keeps every prefix, and so every group, in proportion.
    assigned = np.zeros(len(SPLITS))
    assignment = {}
    for seen, patient in enumerate(ordered_patients, start=1):
        deficit = fractions * seen - assigned
        choice = int(np.argmax(deficit))
        assigned[choice] += 1
        assignment[patient] = SPLITS[choice]
    return assignment


def _uncovered_subtypes(presence: pd.DataFrame, assignment: dict, subtypes: list, fractions: np.ndarray) -> list:
    split_of = presence.index.map(assignment)
    wanted = [name for name, fraction in zip(SPLITS, fractions) if fraction > 0]
    return [
        subtype
        for subtype in subtypes
        if set(split_of[presence[subtype].to_numpy() > 0]) != set(wanted)
    ]


def _check_fractions(fractions) -> np.ndarray:
    values = np.asarray(fractions, dtype=float)
    if values.shape != (3,) or (values < 0).any() or not np.isclose(values.sum(), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, got {fractions}")
    return values


def check_no_leakage(table: pd.DataFrame) -> None:
    """Raise ValueError if a patient or a series appears in more than one split.

    ``table`` has one row per slice with ``patient_id``, ``series_uid`` and ``split``.
    """
    for key in ("patient_id", "series_uid"):
        if key not in table.columns:
            continue
        splits_per_key = table.groupby(key)["split"].nunique()
        leaking = splits_per_key[splits_per_key > 1]
        if len(leaking):
            example = leaking.index[0]
            found = sorted(table.loc[table[key] == example, "split"].unique())
            raise ValueError(f"{len(leaking)} {key} value(s) appear in more than one split, e.g. {example} in {found}")
