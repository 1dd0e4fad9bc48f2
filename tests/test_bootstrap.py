"""Tests of the patient bootstrap and the paired difference in ichlab.bootstrap."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from ichlab import SUBTYPES, bootstrap, metrics
from ichlab.prediction_tables import table_arrays

from test_metrics import make_table, random_table


def test_resample_patients_draws_whole_samples():
    counts = bootstrap.resample_patients(n_patients=7, n_bootstrap=50, seed=1)
    assert counts.shape == (50, 7)
    assert (counts.sum(axis=1) == 7).all()
    assert (counts >= 0).all()
    np.testing.assert_array_equal(counts, bootstrap.resample_patients(7, 50, seed=1))
    assert not np.array_equal(counts, bootstrap.resample_patients(7, 50, seed=2))


def test_patient_codes_group_slices():
    codes, n_patients = bootstrap.patient_codes(["ID_b", "ID_a", "ID_b", "ID_c"])
    assert n_patients == 3
    assert codes.tolist() == [1, 0, 1, 2]


def test_replicates_equal_sklearn_with_sample_weights():
    table = random_table(n_patients=12, slices=6, seed=30)
    labels, probabilities = table_arrays(table)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.45])
    codes, n_patients = bootstrap.patient_codes(table["patient_id"])
    counts = bootstrap.resample_patients(n_patients, 8, seed=0)
    replicates = bootstrap.replicate_metrics(labels, probabilities, thresholds, codes, counts, progress=False)
    for replicate in range(len(counts)):
        weights = counts[replicate][codes]  # a replicate is the table with each slice counted this often
        for column in range(len(SUBTYPES)):
            y = labels[:, column]
            p = probabilities[:, column]
            if (y * weights).sum() == 0:
                assert math.isnan(replicates["f1"][replicate, column])
                continue
            predicted = p >= thresholds[column]
            expected = {
                "f1": f1_score(y, predicted, sample_weight=weights, zero_division=np.nan),
                "f1_at_0.5": f1_score(y, p >= 0.5, sample_weight=weights, zero_division=np.nan),
                "precision": precision_score(y, predicted, sample_weight=weights, zero_division=np.nan),
                "recall": recall_score(y, predicted, sample_weight=weights, zero_division=np.nan),
                "roc_auc": roc_auc_score(y, p, sample_weight=weights),
                "average_precision": average_precision_score(y, p, sample_weight=weights),
            }
            for metric, value in expected.items():
                assert replicates[metric][replicate, column] == pytest.approx(value, nan_ok=True), metric


def test_replicates_without_positive_are_skipped_and_counted():
    # Only patient 0 has epidural slices: every replicate that misses patient 0 is skipped.
    table = random_table(n_patients=6, slices=5, seed=31)
    table["epidural"] = 0
    table.loc[table["patient_id"] == "ID_patient0", "epidural"] = 1
    labels, probabilities = table_arrays(table)
    codes, n_patients = bootstrap.patient_codes(table["patient_id"])
    counts = bootstrap.resample_patients(n_patients, 100, seed=5)
    replicates = bootstrap.replicate_metrics(labels, probabilities, np.full(5, 0.5), codes, counts, progress=False)
    missed = counts[:, 0] == 0
    assert 0 < missed.sum() < 100
    assert replicates["skipped"][0] == missed.sum()
    assert np.isnan(replicates["f1"][missed, 0]).all()
    assert np.isnan(replicates["roc_auc"][missed, 0]).all()
    assert not np.isnan(replicates["f1"][~missed, 0]).any()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = metrics.evaluate(table, table, n_bootstrap=100, seed=5, progress=False)
    assert caught == []
    assert result.at["epidural", "skipped_replicates"] == missed.sum()
    # The macro row skips a replicate when any class is without positives in it.
    assert result.at["macro", "skipped_replicates"] == replicates["no_positive"].any(axis=1).sum()


def test_percentile_interval_values():
    samples = np.column_stack([np.arange(101.0), np.full(101, np.nan), np.r_[np.arange(100.0), np.nan]])
    low, high = bootstrap.percentile_interval(samples, 0.95)
    assert low[0] == pytest.approx(2.5)
    assert high[0] == pytest.approx(97.5)
    assert math.isnan(low[1]) and math.isnan(high[1])
    assert low[2] == pytest.approx(np.percentile(np.arange(100.0), 2.5))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap.percentile_interval(samples, 95)


def test_paired_difference_of_a_model_with_itself_is_zero():
    table = random_table(seed=32)
    thresholds = metrics.choose_thresholds(table)
    result = bootstrap.paired_difference(table, table, thresholds, thresholds, n_bootstrap=50, seed=0, progress=False)
    assert list(result.index) == list(SUBTYPES)
    assert (result["difference"] == 0).all()
    assert (result["difference_lo"] == 0).all()
    assert (result["difference_hi"] == 0).all()
    assert not result["excludes_zero"].any()
    expected_patients = [table.loc[table[s] == 1, "patient_id"].nunique() for s in SUBTYPES]
    assert result["n_positive_patients"].tolist() == expected_patients


def test_paired_difference_detects_a_better_model():
    rng = np.random.default_rng(33)
    n_patients, slices = 40, 10
    labels = (rng.random((n_patients * slices, 5)) < 0.2).astype(int)
    patients = np.repeat(np.arange(n_patients), slices)
    good = make_table(labels, np.clip(0.6 * labels + 0.4 * rng.random(labels.shape), 0, 1), patients)
    poor = make_table(labels, np.clip(0.1 * labels + 0.9 * rng.random(labels.shape), 0, 1), patients)
    result = bootstrap.paired_difference(
        good, poor, metrics.choose_thresholds(good), metrics.choose_thresholds(poor), n_bootstrap=100, seed=1, progress=False
    )
    assert (result["difference"] > 0).all()
    assert (result["difference_lo"] > 0).all()
    assert result["excludes_zero"].all()
    for subtype in SUBTYPES:
        assert result.at[subtype, "a"] == pytest.approx(
            f1_score(good[subtype], good[f"prob_{subtype}"] >= metrics.choose_thresholds(good)[subtype])
        )


def test_paired_difference_matches_rows_by_id():
    table_a = random_table(seed=34)
    table_b = random_table(seed=34)
    table_b[[f"prob_{s}" for s in SUBTYPES]] = table_b[[f"prob_{s}" for s in SUBTYPES]] ** 2
    thresholds = dict.fromkeys(SUBTYPES, 0.3)
    ordered = bootstrap.paired_difference(table_a, table_b, thresholds, thresholds, n_bootstrap=30, seed=2, progress=False)
    shuffled = table_b.sample(frac=1.0, random_state=0)
    again = bootstrap.paired_difference(table_a, shuffled, thresholds, thresholds, n_bootstrap=30, seed=2, progress=False)
    pd.testing.assert_frame_equal(ordered, again)


def test_paired_difference_names_missing_ids():
    table_a = random_table(seed=35)
    table_b = table_a.copy()
    table_b.loc[4, "image_id"] = "ID_other"
    thresholds = dict.fromkeys(SUBTYPES, 0.5)
    with pytest.raises(ValueError, match=r"only in test_a \(ID_000004\).*only in test_b \(ID_other\)"):
        bootstrap.paired_difference(table_a, table_b, thresholds, thresholds, n_bootstrap=5, seed=0, progress=False)


def test_paired_difference_rejects_nan_and_label_mismatch():
    table_a = random_table(seed=36)
    thresholds = dict.fromkeys(SUBTYPES, 0.5)
    with_nan = table_a.copy()
    with_nan.loc[2, "prob_epidural"] = np.nan
    with pytest.raises(ValueError, match=r"test_b: prob_epidural is NaN.*ID_000002"):
        bootstrap.paired_difference(table_a, with_nan, thresholds, thresholds, n_bootstrap=5, seed=0, progress=False)
    relabelled = table_a.copy()
    relabelled.loc[7, "subdural"] = 1 - relabelled.loc[7, "subdural"]
    with pytest.raises(ValueError, match=r"disagree on subdural .*ID_000007"):
        bootstrap.paired_difference(table_a, relabelled, thresholds, thresholds, n_bootstrap=5, seed=0, progress=False)


def test_paired_difference_undefined_class_warns_once():
    table = random_table(seed=37)
    table["intraventricular"] = 0
    thresholds = dict.fromkeys(SUBTYPES, 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = bootstrap.paired_difference(table, table, thresholds, thresholds, n_bootstrap=20, seed=0, progress=False)
    assert len(caught) == 1
    assert "intraventricular" in str(caught[0].message)
    assert math.isnan(result.at["intraventricular", "difference"])
    assert not result.at["intraventricular", "excludes_zero"]
    assert result.at["intraventricular", "skipped_replicates"] == 20
