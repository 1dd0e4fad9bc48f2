"""The prediction table: its columns, its validation, and matching predictions with labels.

A prediction table has one row per slice: ``image_id``, ``patient_id``, ``series_uid``,
``slice_index``, one ``prob_<subtype>`` column per subtype (probabilities in [0, 1]) and
the 0/1 label columns named by the subtypes. ``ichlab.pipeline.predict_split`` writes it;
``ichlab.metrics`` and ``ichlab.bootstrap`` read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning

from ichlab import SUBTYPES

ID_COLUMNS = ("image_id", "patient_id", "series_uid", "slice_index")
PROBABILITY_COLUMNS = tuple(f"prob_{subtype}" for subtype in SUBTYPES)


class UndefinedClassWarning(UndefinedMetricWarning):
    """Warned once per class whose metrics are undefined because the split has no positive slice."""


def format_ids(ids: Sequence, limit: int = 5) -> str:
    """Join up to ``limit`` ids for an error message, followed by the count of the rest."""
    ids = [str(image_id) for image_id in ids]
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_prediction_table(table: pd.DataFrame, name: str = "prediction table") -> None:
    """Raise ``ValueError`` unless ``table`` is a valid prediction table.

    The table needs the id columns, one ``prob_<subtype>`` and one label column per subtype,
    unique image ids, probabilities in [0, 1] without NaN, and labels that are 0 or 1. The
    error names the table, the column and up to five offending image ids.
    """
    missing = [column for column in ID_COLUMNS + PROBABILITY_COLUMNS + SUBTYPES if column not in table.columns]
    if missing:
        raise ValueError(f"{name} is missing the columns {', '.join(missing)}; expected a prediction table")

    duplicated = table["image_id"][table["image_id"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"{name} has {len(duplicated)} duplicated image ids: {format_ids(duplicated)}")

    for column in PROBABILITY_COLUMNS:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        invalid = np.isnan(values)
        if invalid.any():
            raise ValueError(
                f"{name}: {column} is NaN or not a number for {invalid.sum()} slices "
                f"({format_ids(table['image_id'][invalid])}); predict these slices again"
            )
        outside = (values < 0) | (values > 1)
        if outside.any():
            raise ValueError(
                f"{name}: {column} is outside [0, 1] for {outside.sum()} slices "
                f"({format_ids(table['image_id'][outside])}); pass probabilities, not logits"
            )

    for column in SUBTYPES:
        values = pd.to_numeric(table[column], errors="coerce")
        invalid = ~values.isin([0, 1])
        if invalid.any():
            raise ValueError(
                f"{name}: label column {column} contains values other than 0 and 1 for {invalid.sum()} slices "
                f"({format_ids(table['image_id'][invalid])})"
            )


def join_labels(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Add the label columns of ``labels`` to ``predictions``, matched by image id.

    Parameters
    ----------
    predictions
        The id columns and ``prob_<subtype>`` columns, without labels.
    labels
        One row per image id (as an ``image_id`` column or the index, as
        ``ichlab.rsna.read_labels`` returns) and one 0/1 column per subtype.

    Raises
    ------
    ValueError
        If an image id of either table is missing from the other; the message names them.
    """
    if "image_id" in labels.columns:
        labels = labels.set_index("image_id")
    labels = labels[list(SUBTYPES)]
    predicted_ids = pd.Index(predictions["image_id"])
    without_label = predicted_ids.difference(labels.index)
    without_prediction = labels.index.difference(predicted_ids)
    problems = []
    if len(without_label):
        problems.append(f"{len(without_label)} predicted image ids have no label ({format_ids(without_label)})")
    if len(without_prediction):
        problems.append(
            f"{len(without_prediction)} labelled image ids have no prediction ({format_ids(without_prediction)})"
        )
    if problems:
        raise ValueError("predictions and labels do not match: " + "; ".join(problems))

    joined = predictions.drop(columns=[column for column in SUBTYPES if column in predictions.columns])
    joined = joined.join(labels, on="image_id")
    check_prediction_table(joined, "joined predictions and labels")
    return joined


def table_arrays(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return the (N, 5) int8 labels and (N, 5) float64 probabilities of a prediction table."""
    labels = table[list(SUBTYPES)].to_numpy(dtype=np.int8)  # (N, 5)
    probabilities = table[list(PROBABILITY_COLUMNS)].to_numpy(dtype=np.float64)  # (N, 5)
    return labels, probabilities


def threshold_array(thresholds: Mapping[str, float]) -> np.ndarray:
    """Return per-class thresholds as a (5,) array in ``SUBTYPES`` order; raise if one is missing or NaN."""
    missing = [subtype for subtype in SUBTYPES if subtype not in thresholds]
    if missing:
        raise ValueError(f"thresholds are missing for {', '.join(missing)}")
    values = np.array([float(thresholds[subtype]) for subtype in SUBTYPES])  # (5,)
    if np.isnan(values).any():
        raise ValueError(f"thresholds must be numbers, got {dict(thresholds)}")
    return values
