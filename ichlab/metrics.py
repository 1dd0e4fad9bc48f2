"""Per-class evaluation of prediction tables: thresholds, F1, AUC, RSNA log loss, intervals.

A prediction table has one row per slice: ``image_id``, ``patient_id``, ``series_uid``,
``slice_index``, one ``prob_<subtype>`` column per subtype and the 0/1 label columns named
by the subtypes. Thresholds are chosen on validation and applied unchanged to test. Every
metric comes from scikit-learn. Intervals come from a bootstrap over patients
(``ichlab.bootstrap``) because the slices of one patient are not independent.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from ichlab import SUBTYPES
from ichlab.bootstrap import (
    COUNT_METRICS,
    INTERVAL_METRICS,
    paired_difference,
    patient_codes,
    percentile_interval,
    replicate_metrics,
    resample_patients,
    warn_few_positive_patients,
)
from ichlab.prediction_tables import (
    ID_COLUMNS,
    PROBABILITY_COLUMNS,
    UndefinedClassWarning,
    check_prediction_table,
    join_labels,
    table_arrays,
    threshold_array,
)
from ichlab.reference import REFERENCE_F1, f1_table, table_to_markdown, write_f1_table

logger = logging.getLogger(__name__)

# A slice is positive when its probability is at or above the threshold.
DEFAULT_THRESHOLD = 0.5

# RSNA 2019 weighted log loss: weight 1 for each subtype and 2 for "any".
RSNA_WEIGHTS = {**{subtype: 1.0 for subtype in SUBTYPES}, "any": 2.0}

__all__ = [
    "ID_COLUMNS",
    "PROBABILITY_COLUMNS",
    "REFERENCE_F1",
    "UndefinedClassWarning",
    "check_prediction_table",
    "choose_thresholds",
    "classification_metrics",
    "confusion_counts",
    "evaluate",
    "f1_table",
    "join_labels",
    "paired_difference",
    "rsna_log_loss",
    "table_to_markdown",
    "to_markdown",
    "write_f1_table",
]

to_markdown = table_to_markdown


def choose_thresholds(val_table: pd.DataFrame) -> dict[str, float]:
    """Choose each class's F1-maximising threshold on a validation prediction table.

    Candidates are the distinct predicted probabilities, as returned by
    ``sklearn.metrics.precision_recall_curve``; a slice is positive when its probability
    is at or above the threshold. Of tied thresholds the lowest wins (more recall). A class
    with no positive slice in ``val_table`` keeps 0.5 and gets one ``UndefinedClassWarning``.

    Returns
    -------
    dict
        Subtype name to threshold, in ``SUBTYPES`` order.
    """
    check_prediction_table(val_table, "validation table")
    labels, probabilities = table_arrays(val_table)
    thresholds = {}
    for column, subtype in enumerate(SUBTYPES):
        if labels[:, column].sum() == 0:
            warnings.warn(
                f"{subtype}: no positive slice in the validation table, so its threshold stays at "
                f"{DEFAULT_THRESHOLD}",
                UndefinedClassWarning,
                stacklevel=2,
            )
            thresholds[subtype] = DEFAULT_THRESHOLD
            continue
        precision, recall, candidates = precision_recall_curve(labels[:, column], probabilities[:, column])
        # precision[i] and recall[i] belong to candidates[i]; the last pair (recall 0) has none.
        precision, recall = precision[:-1], recall[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        thresholds[subtype] = float(candidates[int(np.argmax(f1))])
    return thresholds


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """Compute F1, precision and recall at ``threshold``, ROC AUC and average precision for one class.

    All values come from scikit-learn. When ``labels`` has no positive, every value is NaN:
    scikit-learn would report F1 0 and average precision 0 in that case, which reads as a
    failed model rather than an undefined metric. Precision is NaN when nothing is predicted
    positive (``zero_division=np.nan``).
    """
    labels = np.asarray(labels)
    predicted = (np.asarray(probabilities) >= threshold).astype(np.int8)
    if labels.sum() == 0:
        return dict.fromkeys(("f1", "precision", "recall", "roc_auc", "average_precision"), np.nan)
    with warnings.catch_warnings():
        # AUC warns for a constant label column, which cannot occur here, and for nothing else.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        roc_auc = roc_auc_score(labels, probabilities) if labels.min() == 0 else np.nan
    return {
        "f1": float(f1_score(labels, predicted, zero_division=np.nan)),
        "precision": float(precision_score(labels, predicted, zero_division=np.nan)),
        "recall": float(recall_score(labels, predicted, zero_division=np.nan)),
        "roc_auc": float(roc_auc),
        "average_precision": float(average_precision_score(labels, probabilities)),
    }


def confusion_counts(table: pd.DataFrame, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """Count true and false positives and negatives per class at the given thresholds.

    Returns
    -------
    pandas.DataFrame
        Index ``SUBTYPES``, integer columns ``tp``, ``fp``, ``fn``, ``tn``.
    """
    check_prediction_table(table)
    labels, probabilities = table_arrays(table)
    predicted = (probabilities >= threshold_array(thresholds)).astype(np.int8)  # (N, 5)
    matrices = multilabel_confusion_matrix(labels, predicted, labels=list(range(len(SUBTYPES))))  # (5, 2, 2)
    counts = pd.DataFrame(
        {
            "tp": matrices[:, 1, 1],
            "fp": matrices[:, 0, 1],
            "fn": matrices[:, 1, 0],
            "tn": matrices[:, 0, 0],
        },
        index=pd.Index(SUBTYPES, name="subtype"),
    )
    return counts


def rsna_log_loss(table: pd.DataFrame) -> float:
    """Compute the RSNA 2019 weighted log loss of a prediction table.

    The loss is the weighted mean of ``sklearn.metrics.log_loss`` over six columns: the five
    subtypes with weight 1 and ``any`` with weight 2. Because every column has one value per
    slice, this equals the competition's mean over slices of the per-slice weighted loss.

    When the table has no ``prob_any`` column (the ichlab models have five outputs), the
    probability of ``any`` is derived as the maximum of the five subtype probabilities, and
    a missing ``any`` label as the maximum of the subtype labels. The maximum is the
    smallest value consistent with the subtype probabilities because P(any) is at least
    P(subtype) for every subtype. It is exact when no subtype occurs without the most
    likely one, and an underestimate otherwise.
    """
    check_prediction_table(table)
    labels, probabilities = table_arrays(table)
    if "prob_any" in table.columns:
        any_probability = table["prob_any"].to_numpy(dtype=np.float64)
    else:
        any_probability = probabilities.max(axis=1)
    any_label = table["any"].to_numpy(dtype=np.int8) if "any" in table.columns else labels.max(axis=1)
    labels = np.column_stack([labels, any_label])  # (N, 6)
    probabilities = np.column_stack([probabilities, any_probability])  # (N, 6)

    weights = np.array(list(RSNA_WEIGHTS.values()))  # (6,)
    losses = np.array(
        [log_loss(labels[:, column], probabilities[:, column], labels=[0, 1]) for column in range(len(weights))]
    )
    return float((weights * losses).sum() / weights.sum())


def evaluate(
    val_table: pd.DataFrame,
    test_table: pd.DataFrame,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    thresholds: Mapping[str, float] | None = None,
    confidence: float = 0.95,
    interval_metrics: Sequence[str] = COUNT_METRICS,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate one model: thresholds from validation, metrics with intervals on test.

    Parameters
    ----------
    val_table, test_table
        Prediction tables of the validation and test splits.
    n_bootstrap
        Replicates of the bootstrap over test patients; 0 leaves the intervals NaN.
    seed
        Seed of the patient resampling; the same seed gives the same intervals.
    thresholds
        Per-class thresholds to use instead of choosing them on ``val_table``.
    confidence
        Coverage of the percentile intervals.
    interval_metrics
        Metrics that get intervals: any of ``ichlab.bootstrap.INTERVAL_METRICS``. The default
        covers F1, F1 at 0.5, precision and recall, whose 1000 replicates take well under a
        second. Adding ``"roc_auc"`` and ``"average_precision"`` calls scikit-learn twice per
        replicate, which took 16 to 44 s for 10,000 slices on 2 CPU cores.

    Returns
    -------
    pandas.DataFrame
        One row per subtype and a ``macro`` row (the mean over the classes with at least one
        positive test slice; NaN when one of them has an undefined value). Columns: ``threshold``, ``n_slices``, ``n_patients``, ``n_positive``,
        ``n_positive_patients`` (intervals from fewer than 5 are too narrow), each metric of ``INTERVAL_METRICS`` (``f1`` at the tuned
        threshold, ``f1_at_0.5``, ``precision``, ``recall``, ``roc_auc``,
        ``average_precision``) with ``<metric>_lo`` and ``<metric>_hi``, ``n_classes`` (how
        many classes the row includes), ``skipped_replicates`` (replicates without a
        positive slice of the class, left out of its intervals) and ``n_replicates``.
        ``DataFrame.attrs`` holds ``rsna_log_loss``, ``confidence`` and ``seed``.
    """
    check_prediction_table(test_table, "test table")
    if len(test_table) == 0:
        raise ValueError("test table has no rows; predict the test split first")
    if thresholds is None:
        thresholds = choose_thresholds(val_table)
    threshold_values = threshold_array(thresholds)
    unknown = [metric for metric in interval_metrics if metric not in INTERVAL_METRICS]
    if unknown:
        raise ValueError(f"interval_metrics {unknown} are not in {INTERVAL_METRICS}")

    labels, probabilities = table_arrays(test_table)
    codes, n_patients = patient_codes(test_table["patient_id"])

    rows = {}
    undefined = []
    for column, subtype in enumerate(SUBTYPES):
        tuned = classification_metrics(labels[:, column], probabilities[:, column], threshold_values[column])
        at_half = classification_metrics(labels[:, column], probabilities[:, column], DEFAULT_THRESHOLD)
        if labels[:, column].sum() == 0:
            undefined.append(subtype)
        rows[subtype] = {
            "threshold": threshold_values[column],
            "n_slices": len(test_table),
            "n_patients": n_patients,
            "n_positive": int(labels[:, column].sum()),
            "n_positive_patients": int(test_table.loc[labels[:, column] == 1, "patient_id"].nunique()),
            "f1": tuned["f1"],
            "f1_at_0.5": at_half["f1"],
            "precision": tuned["precision"],
            "recall": tuned["recall"],
            "roc_auc": tuned["roc_auc"],
            "average_precision": tuned["average_precision"],
        }
    for subtype in undefined:
        warnings.warn(
            f"{subtype}: no positive slice in the test table, so its F1, precision, recall, ROC AUC "
            "and average precision are undefined (NaN) and left out of the macro averages",
            UndefinedClassWarning,
            stacklevel=2,
        )
    result = pd.DataFrame.from_dict(rows, orient="index")
    result.index.name = "subtype"
    warn_few_positive_patients(result["n_positive_patients"])

    # Bootstrap over patients: every replicate resamples whole patients with replacement.
    counts = resample_patients(n_patients, n_bootstrap, seed)  # (R, P)
    replicates = replicate_metrics(
        labels, probabilities, threshold_values, codes, counts, metrics=interval_metrics, progress=progress
    )
    defined = result["n_positive"].to_numpy() > 0  # (5,) classes that enter the macro means
    macro = {"n_classes": int(defined.sum()), "n_slices": len(test_table), "n_patients": n_patients}
    for metric in INTERVAL_METRICS:
        macro[metric] = float(result[metric].to_numpy(dtype=float)[defined].mean()) if defined.any() else np.nan
        if metric not in replicates:
            result[f"{metric}_lo"] = result[f"{metric}_hi"] = np.nan
            macro[f"{metric}_lo"] = macro[f"{metric}_hi"] = np.nan
            continue
        samples = replicates[metric]  # (R, 5), NaN where the replicate has no positive
        low, high = percentile_interval(samples, confidence)
        result[f"{metric}_lo"] = low
        result[f"{metric}_hi"] = high
        # A replicate enters the macro interval when every class of the macro mean is defined in it.
        if defined.any():
            macro_samples = samples[:, defined].mean(axis=1, keepdims=True)  # (R, 1)
        else:
            macro_samples = np.full((len(samples), 1), np.nan)
        macro_low, macro_high = percentile_interval(macro_samples, confidence)
        macro[f"{metric}_lo"], macro[f"{metric}_hi"] = float(macro_low[0]), float(macro_high[0])

    for subtype, skipped in zip(SUBTYPES, replicates["skipped"]):
        if 0 < skipped:
            logger.info("%s: %d of %d replicates had no positive slice and were skipped", subtype, skipped, n_bootstrap)
    result["n_classes"] = defined.astype(int)
    result["skipped_replicates"] = replicates["skipped"]
    result["n_replicates"] = n_bootstrap
    macro["skipped_replicates"] = int(replicates["no_positive"][:, defined].any(axis=1).sum())
    macro["n_replicates"] = n_bootstrap
    result.loc["macro"] = pd.Series(macro)

    ordered = ["threshold", "n_slices", "n_patients", "n_positive", "n_positive_patients"]
    for metric in INTERVAL_METRICS:
        ordered += [metric, f"{metric}_lo", f"{metric}_hi"]
    ordered += ["n_classes", "skipped_replicates", "n_replicates"]
    counts_columns = ["n_slices", "n_patients", "n_positive", "n_positive_patients", "n_classes", "skipped_replicates", "n_replicates"]
    result = result[ordered].astype(dict.fromkeys(counts_columns, "Int64"))  # the macro row has NA counts
    result.attrs.update({"rsna_log_loss": rsna_log_loss(test_table), "confidence": confidence, "seed": seed})
    return result
