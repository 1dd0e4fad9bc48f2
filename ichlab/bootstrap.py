"""Bootstrap over patients: confidence intervals and paired differences of per-class metrics.

Slices of one patient share anatomy, scanner and lesions, so resampling slices would make
intervals too narrow. Every replicate here draws whole patients with replacement, and a
drawn patient contributes all of its slices, once per draw. A replicate is stored as the
number of times each patient was drawn, which turns into a per-slice ``sample_weight``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm.auto import tqdm

from ichlab import SUBTYPES
from ichlab.prediction_tables import (
    UndefinedClassWarning,
    check_prediction_table,
    format_ids,
    table_arrays,
    threshold_array,
)

logger = logging.getLogger(__name__)

# Metrics with bootstrap intervals; F1, precision and recall at the tuned threshold unless named.
INTERVAL_METRICS = ("f1", "f1_at_0.5", "precision", "recall", "roc_auc", "average_precision")
COUNT_METRICS = ("f1", "f1_at_0.5", "precision", "recall")
RANKING_METRICS = {"roc_auc": roc_auc_score, "average_precision": average_precision_score}

# NOTE: a rule of thumb, not a derived bound. With positives from fewer patients than this,
# the bootstrap sees almost no patient-to-patient variation and its intervals are too narrow.
FEW_POSITIVE_PATIENTS = 5


def warn_few_positive_patients(n_positive_patients: Sequence[int]) -> None:
    """Log a warning for each class whose positive slices come from 1 to 4 patients."""
    for subtype, count in zip(SUBTYPES, n_positive_patients):
        if 0 < count < FEW_POSITIVE_PATIENTS:
            logger.warning(
                "%s: the positive slices come from %d patient(s), so its bootstrap interval understates the "
                "uncertainty; judge it with care",
                subtype,
                count,
            )


def patient_codes(patient_ids: Sequence) -> tuple[np.ndarray, int]:
    """Map patient ids to integer codes 0 .. P-1; return the codes (N,) and P."""
    codes, uniques = pd.factorize(pd.Series(patient_ids), sort=True)
    return codes.astype(np.int64), len(uniques)


def resample_patients(n_patients: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """Draw ``n_bootstrap`` bootstrap samples of patients.

    Returns
    -------
    numpy.ndarray
        (R, P) int64: how many times each of the P patients was drawn in each of the R
        replicates; every row sums to P.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be 0 or more, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_bootstrap, n_patients))  # (R, P) patient indices
    offsets = np.arange(n_bootstrap)[:, None] * n_patients
    counts = np.bincount((draws + offsets).ravel(), minlength=n_bootstrap * n_patients)
    return counts.reshape(n_bootstrap, n_patients)  # (R, P)


def _per_patient_sums(codes: np.ndarray, values: np.ndarray, n_patients: int) -> np.ndarray:
    sums = np.zeros((n_patients, values.shape[1]))
    np.add.at(sums, codes, values)
    return sums  # (P, C)


def _scores_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    # The formulas of sklearn.metrics.precision_recall_fscore_support on sample-weighted
    # counts, with zero_division=np.nan; a test checks them against f1_score(sample_weight=...).
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return {"f1": f1, "precision": precision, "recall": recall}


def replicate_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    thresholds: np.ndarray,
    codes: np.ndarray,
    counts: np.ndarray,
    *,
    metrics: Sequence[str] = INTERVAL_METRICS,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Compute per-class metrics in every bootstrap replicate.

    F1, precision and recall depend only on the weighted confusion counts, so all replicates
    come from one matrix product of the draw counts with per-patient counts. ROC AUC and
    average precision depend on the ranking and call scikit-learn once per replicate and
    class with the replicate's slice weights.

    Parameters
    ----------
    labels, probabilities
        (N, C) 0/1 labels and probabilities of N slices.
    thresholds
        (C,) thresholds; ``f1_at_0.5`` uses 0.5.
    codes
        (N,) patient code of each slice, from :func:`patient_codes`.
    counts
        (R, P) draws per patient, from :func:`resample_patients`.
    metrics
        Names from ``INTERVAL_METRICS``.

    Returns
    -------
    dict
        Metric name to (R, C) values, NaN in replicates without a positive slice of the
        class; ``"no_positive"`` to the (R, C) mask of those replicates and ``"skipped"`` to
        (C,) their number per class.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n_patients = counts.shape[1]
    positives = counts @ _per_patient_sums(codes, labels, n_patients)  # (R, C) positive slices per replicate
    no_positive = positives == 0
    result: dict[str, np.ndarray] = {"no_positive": no_positive, "skipped": no_positive.sum(axis=0)}

    for name, threshold in (("tuned", thresholds), ("half", np.full(labels.shape[1], 0.5))):
        requested = [
            metric for metric in COUNT_METRICS if metric in metrics and (metric == "f1_at_0.5") == (name == "half")
        ]
        if not requested:
            continue
        predicted = (probabilities >= threshold).astype(np.float64)  # (N, C)
        tp = counts @ _per_patient_sums(codes, predicted * labels, n_patients)  # (R, C)
        fp = counts @ _per_patient_sums(codes, predicted * (1 - labels), n_patients)
        fn = counts @ _per_patient_sums(codes, (1 - predicted) * labels, n_patients)
        scores = _scores_from_counts(tp, fp, fn)
        for metric in requested:
            values = scores["f1" if metric == "f1_at_0.5" else metric]
            result[metric] = np.where(no_positive, np.nan, values)

    ranking = [metric for metric in RANKING_METRICS if metric in metrics]
    if ranking:
        n_slices = counts @ np.bincount(codes, minlength=n_patients)  # (R,)
        values = {metric: np.full(positives.shape, np.nan) for metric in ranking}
        defined = ~no_positive & (positives < n_slices[:, None])  # (R, C) both classes present
        for replicate in tqdm(range(len(counts)), desc="bootstrap AUC", disable=not progress, leave=False):
            weights = counts[replicate][codes]  # (N,) copies of each slice in this replicate
            drawn = np.flatnonzero(weights)
            for metric in ranking:
                with warnings.catch_warnings():
                    # A class without positives in this replicate warns; it is masked below.
                    warnings.simplefilter("ignore", UndefinedMetricWarning)
                    warnings.filterwarnings("ignore", message="No positive class found in y_true")
                    scores = RANKING_METRICS[metric](
                        labels[drawn], probabilities[drawn], sample_weight=weights[drawn], average=None
                    )  # (C,)
                values[metric][replicate] = np.where(defined[replicate], scores, np.nan)
        result.update(values)
    return result


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Return the percentile interval (low (C,), high (C,)) of (R, C) replicates, ignoring NaN.

    A column with no finite replicate gets NaN bounds.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[0] == 0:
        return np.full(samples.shape[1], np.nan), np.full(samples.shape[1], np.nan)
    tail = (1 - confidence) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN bounds
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def _align(test_a: pd.DataFrame, test_b: pd.DataFrame) -> pd.DataFrame:
    ids_a = pd.Index(test_a["image_id"])
    ids_b = pd.Index(test_b["image_id"])
    only_a = ids_a.difference(ids_b)
    only_b = ids_b.difference(ids_a)
    if len(only_a) or len(only_b):
        raise ValueError(
            "the two prediction tables cover different slices: "
            f"{len(only_a)} image ids only in test_a ({format_ids(only_a)}), "
            f"{len(only_b)} only in test_b ({format_ids(only_b)}); predict the same split with both models"
        )
    aligned_b = test_b.set_index("image_id").loc[test_a["image_id"]].reset_index()
    for column in ("patient_id", *SUBTYPES):
        differs = test_a[column].to_numpy() != aligned_b[column].to_numpy()
        if differs.any():
            raise ValueError(
                f"the two prediction tables disagree on {column} for {differs.sum()} slices "
                f"({format_ids(test_a['image_id'][differs])})"
            )
    return aligned_b


def paired_difference(
    test_a: pd.DataFrame,
    test_b: pd.DataFrame,
    thresholds_a: Mapping[str, float],
    thresholds_b: Mapping[str, float],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    metric: str = "f1",
    confidence: float = 0.95,
    progress: bool = True,
) -> pd.DataFrame:
    """Estimate the per-class difference ``metric(a) - metric(b)`` with a paired patient bootstrap.

    Both models are scored on the same resampled patients in every replicate, so the
    variation that the two share (which patients happen to be in the test split) cancels.

    Parameters
    ----------
    test_a, test_b
        Prediction tables of two models on the same slices; rows are matched by image id.
    thresholds_a, thresholds_b
        Each model's thresholds, chosen on validation.
    metric
        One of ``ichlab.bootstrap.INTERVAL_METRICS``.

    Returns
    -------
    pandas.DataFrame
        Index ``SUBTYPES``; columns ``a``, ``b``, ``difference`` (on the whole test table),
        ``difference_lo``, ``difference_hi``, ``excludes_zero`` (the interval lies entirely
        above or below zero; False when undefined), ``n_positive_patients`` (an interval from
        fewer than ``FEW_POSITIVE_PATIENTS`` is too narrow), ``skipped_replicates`` and
        ``n_replicates``.

    Raises
    ------
    ValueError
        If the tables' image ids differ (the message names the missing ids), if patients or
        labels of matched ids differ, or if a probability is NaN.
    """
    from ichlab.metrics import classification_metrics  # imported here because ichlab.metrics imports this module

    if metric not in INTERVAL_METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(INTERVAL_METRICS)}")
    check_prediction_table(test_a, "test_a")
    check_prediction_table(test_b, "test_b")
    test_b = _align(test_a, test_b)
    labels, probabilities_a = table_arrays(test_a)
    _, probabilities_b = table_arrays(test_b)
    threshold_values = {"a": threshold_array(thresholds_a), "b": threshold_array(thresholds_b)}
    probabilities = {"a": probabilities_a, "b": probabilities_b}

    codes, n_patients = patient_codes(test_a["patient_id"])
    n_positive_patients = [int(test_a.loc[labels[:, column] == 1, "patient_id"].nunique()) for column in range(len(SUBTYPES))]
    warn_few_positive_patients(n_positive_patients)
    counts = resample_patients(n_patients, n_bootstrap, seed)  # (R, P), shared by both models
    point = {}
    samples = {}
    for model in ("a", "b"):
        point[model] = []
        for column in range(len(SUBTYPES)):
            threshold = 0.5 if metric == "f1_at_0.5" else threshold_values[model][column]
            scores = classification_metrics(labels[:, column], probabilities[model][:, column], threshold)
            point[model].append(scores["f1" if metric == "f1_at_0.5" else metric])
        replicates = replicate_metrics(
            labels, probabilities[model], threshold_values[model], codes, counts, metrics=(metric,), progress=progress
        )
        samples[model] = replicates[metric]  # (R, 5)
        skipped = replicates["skipped"]

    low, high = percentile_interval(samples["a"] - samples["b"], confidence)
    logger.info(
        "paired %s difference over %d patients and %d replicates: %s",
        metric,
        n_patients,
        n_bootstrap,
        ", ".join(f"{subtype} {lo:+.3f} to {hi:+.3f}" for subtype, lo, hi in zip(SUBTYPES, low, high)),
    )
    result = pd.DataFrame(
        {
            "a": point["a"],
            "b": point["b"],
            "difference": np.array(point["a"]) - np.array(point["b"]),
            "difference_lo": low,
            "difference_hi": high,
            "excludes_zero": (low > 0) | (high < 0),
            "n_positive_patients": n_positive_patients,
            "skipped_replicates": skipped,
            "n_replicates": n_bootstrap,
        },
        index=pd.Index(SUBTYPES, name="subtype"),
    )
    for subtype, n_positive in zip(SUBTYPES, labels.sum(axis=0)):
        if n_positive == 0:
            warnings.warn(
                f"{subtype}: no positive slice in the test tables, so the difference is undefined (NaN)",
                UndefinedClassWarning,
                stacklevel=2,
            )
    result.attrs.update({"metric": metric, "confidence": confidence, "seed": seed})
    return result
