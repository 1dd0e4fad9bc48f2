"""Tests of ichlab.metrics and ichlab.reference on prediction tables built here."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from ichlab import SUBTYPES, metrics, reference
from ichlab.bootstrap import INTERVAL_METRICS


def make_table(labels, probabilities, patients=None) -> pd.DataFrame:
    """Build a prediction table from (N, 5) labels and probabilities; one patient per slice by default."""
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    n = len(labels)
    patients = np.arange(n) if patients is None else np.asarray(patients)
    table = pd.DataFrame(
        {
            "image_id": [f"ID_{i:06x}" for i in range(n)],
            "patient_id": [f"ID_patient{p}" for p in patients],
            "series_uid": [f"1.2.3.{p}" for p in patients],
            "slice_index": np.arange(n),
        }
    )
    for column, subtype in enumerate(SUBTYPES):
        table[f"prob_{subtype}"] = probabilities[:, column]
    for column, subtype in enumerate(SUBTYPES):
        table[subtype] = labels[:, column]
    return table


def random_table(n_patients=20, slices=10, seed=0, positive_rate=0.2) -> pd.DataFrame:
    """Seeded random table: noisy probabilities that rank positives higher on average."""
    rng = np.random.default_rng(seed)
    n = n_patients * slices
    labels = (rng.random((n, len(SUBTYPES))) < positive_rate).astype(int)
    probabilities = np.clip(0.35 * labels + 0.65 * rng.random(labels.shape), 0, 1)
    return make_table(labels, probabilities, np.repeat(np.arange(n_patients), slices))


def single_class(labels, probabilities, patients=None) -> pd.DataFrame:
    """Table whose every class has the same labels and probabilities."""
    labels = np.repeat(np.asarray(labels)[:, None], len(SUBTYPES), axis=1)
    probabilities = np.repeat(np.asarray(probabilities, dtype=float)[:, None], len(SUBTYPES), axis=1)
    return make_table(labels, probabilities, patients)


# Thresholds


def test_choose_thresholds_maximises_validation_f1():
    table = random_table(n_patients=10, seed=1)
    thresholds = metrics.choose_thresholds(table)
    assert list(thresholds) == list(SUBTYPES)
    for subtype in SUBTYPES:
        labels = table[subtype].to_numpy()
        probabilities = table[f"prob_{subtype}"].to_numpy()
        best = max(f1_score(labels, probabilities >= t) for t in np.unique(probabilities))
        chosen = f1_score(labels, probabilities >= thresholds[subtype])
        assert chosen == pytest.approx(best)
        assert thresholds[subtype] in set(probabilities)


def test_threshold_is_a_probability_counted_positive():
    table = single_class([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9])
    thresholds = metrics.choose_thresholds(table)
    assert thresholds["epidural"] == 0.6
    result = metrics.evaluate(table, table, n_bootstrap=0, progress=False)
    assert result.at["epidural", "f1"] == 1.0
    assert result.at["epidural", "recall"] == 1.0


def test_probability_at_threshold_is_positive():
    labels = np.array([0, 1, 0, 1])
    probabilities = np.array([0.2, 0.5, 0.5, 0.8])
    scores = metrics.classification_metrics(labels, probabilities, 0.5)
    assert scores["f1"] == pytest.approx(0.8)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == 1.0
    counts = metrics.confusion_counts(single_class(labels, probabilities), dict.fromkeys(SUBTYPES, 0.5))
    assert counts.loc["epidural"].to_dict() == {"tp": 2, "fp": 1, "fn": 0, "tn": 1}


def test_choose_thresholds_without_positive_keeps_half():
    labels = np.zeros((6, 5), dtype=int)
    labels[:3, 1:] = 1
    table = make_table(labels, np.linspace(0.1, 0.6, 30).reshape(6, 5))
    with pytest.warns(metrics.UndefinedClassWarning, match="epidural") as caught:
        thresholds = metrics.choose_thresholds(table)
    assert thresholds["epidural"] == 0.5
    assert len(caught) == 1


# Metrics against scikit-learn


def test_evaluate_matches_sklearn_where_positives_exist():
    val = random_table(seed=2)
    test = random_table(seed=3)
    result = metrics.evaluate(val, test, n_bootstrap=10, seed=0, progress=False)
    thresholds = metrics.choose_thresholds(val)
    for subtype in SUBTYPES:
        labels = test[subtype].to_numpy()
        probabilities = test[f"prob_{subtype}"].to_numpy()
        predicted = probabilities >= thresholds[subtype]
        row = result.loc[subtype]
        assert row["threshold"] == thresholds[subtype]
        assert row["f1"] == f1_score(labels, predicted)
        assert row["f1_at_0.5"] == f1_score(labels, probabilities >= 0.5)
        assert row["precision"] == precision_score(labels, predicted)
        assert row["recall"] == recall_score(labels, predicted)
        assert row["roc_auc"] == roc_auc_score(labels, probabilities)
        assert row["average_precision"] == average_precision_score(labels, probabilities)
        assert row["n_positive"] == labels.sum()


def test_evaluate_columns_and_macro_row():
    result = metrics.evaluate(random_table(seed=4), random_table(seed=5), n_bootstrap=20, progress=False)
    assert list(result.index) == list(SUBTYPES) + ["macro"]
    for metric in ("f1", "f1_at_0.5", "precision", "recall", "roc_auc", "average_precision"):
        assert {metric, f"{metric}_lo", f"{metric}_hi"} <= set(result.columns)
        assert result.at["macro", metric] == pytest.approx(result.loc[list(SUBTYPES), metric].mean())
    assert result.at["macro", "n_classes"] == 5
    assert (result["n_replicates"] == 20).all()
    assert result["n_positive"].dtype == "Int64"
    assert pd.isna(result.at["macro", "n_positive"])
    assert result.loc[list(SUBTYPES), "roc_auc_lo"].isna().all()  # AUC intervals only on request
    assert result.attrs["rsna_log_loss"] == pytest.approx(metrics.rsna_log_loss(random_table(seed=5)))


def test_evaluate_intervals_are_seeded():
    val, test = random_table(seed=6), random_table(seed=7)
    every_interval = INTERVAL_METRICS
    first = metrics.evaluate(val, test, n_bootstrap=40, seed=3, interval_metrics=every_interval, progress=False)
    again = metrics.evaluate(val, test, n_bootstrap=40, seed=3, interval_metrics=every_interval, progress=False)
    other = metrics.evaluate(val, test, n_bootstrap=40, seed=4, interval_metrics=every_interval, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["f1_lo"], other["f1_lo"])
    for subtype in SUBTYPES:
        assert first.at[subtype, "f1_lo"] < first.at[subtype, "f1"] < first.at[subtype, "f1_hi"]
        assert first.at[subtype, "roc_auc_lo"] < first.at[subtype, "roc_auc"] < first.at[subtype, "roc_auc_hi"]


def test_evaluate_warns_about_few_positive_patients(caplog):
    table = random_table(n_patients=10, seed=23)
    table["subdural"] = 0
    table.loc[table["patient_id"].isin(["ID_patient3", "ID_patient4"]), "subdural"] = 1
    with caplog.at_level("WARNING", logger="ichlab"):
        result = metrics.evaluate(table, table, n_bootstrap=10, progress=False)
    assert result.at["subdural", "n_positive_patients"] == 2
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "subdural: the positive slices come from 2 patient(s), so its bootstrap interval understates the "
        "uncertainty; judge it with care"
    ]


def test_evaluate_rejects_unknown_interval_metric():
    table = random_table(seed=8)
    with pytest.raises(ValueError, match="accuracy"):
        metrics.evaluate(table, table, n_bootstrap=5, interval_metrics=("accuracy",), progress=False)


def test_evaluate_without_intervals_leaves_them_nan():
    table = random_table(seed=9)
    result = metrics.evaluate(table, table, n_bootstrap=10, interval_metrics=("f1",), progress=False)
    assert result["roc_auc_lo"].isna().all()
    assert result.loc[list(SUBTYPES), "f1_lo"].notna().all()


# Edge cases


def test_class_without_positive_is_undefined_with_one_warning():
    val = random_table(seed=10)
    test = random_table(seed=11)
    test["epidural"] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = metrics.evaluate(val, test, n_bootstrap=50, interval_metrics=INTERVAL_METRICS, progress=False)
    undefined = [w for w in caught if issubclass(w.category, metrics.UndefinedClassWarning)]
    assert len(undefined) == 1
    assert "epidural" in str(undefined[0].message)
    assert len(caught) == 1
    for metric in ("f1", "f1_at_0.5", "precision", "recall", "roc_auc", "average_precision", "f1_lo", "roc_auc_hi"):
        assert math.isnan(result.at["epidural", metric]), metric
    assert result.at["epidural", "skipped_replicates"] == 50
    assert result.at["epidural", "n_classes"] == 0
    assert result.at["macro", "n_classes"] == 4
    others = [subtype for subtype in SUBTYPES if subtype != "epidural"]
    assert result.at["macro", "f1"] == pytest.approx(result.loc[others, "f1"].mean())


def test_classification_metrics_without_positive_are_nan_not_zero():
    labels = np.zeros(4, dtype=int)
    probabilities = np.array([0.1, 0.7, 0.8, 0.2])
    # scikit-learn alone reports 0 here, which would read as a failed model.
    assert f1_score(labels, probabilities >= 0.5, zero_division=np.nan) == 0.0
    scores = metrics.classification_metrics(labels, probabilities, 0.5)
    assert all(math.isnan(value) for value in scores.values())


def test_constant_predictions():
    labels = np.array([1, 0, 0, 0] * 5)
    table = single_class(labels, np.full(20, 0.3), patients=np.repeat(np.arange(5), 4))
    assert metrics.choose_thresholds(table)["epidural"] == 0.3
    result = metrics.evaluate(table, table, n_bootstrap=20, progress=False)
    row = result.loc["epidural"]
    assert row["f1"] == pytest.approx(0.4)  # everything positive: precision 0.25, recall 1
    assert row["precision"] == pytest.approx(0.25)
    assert row["recall"] == 1.0
    assert row["f1_at_0.5"] == 0.0  # nothing positive at 0.5, while positives exist
    assert row["roc_auc"] == 0.5
    assert row["average_precision"] == pytest.approx(0.25)
    assert row["f1_lo"] == pytest.approx(0.4)  # every patient has 1 positive in 4 slices
    assert row["f1_hi"] == pytest.approx(0.4)


def test_nan_probability_raises_naming_the_slice():
    table = random_table(seed=12)
    table.loc[3, "prob_subdural"] = np.nan
    with pytest.raises(ValueError, match=r"prob_subdural.*ID_000003"):
        metrics.evaluate(table, random_table(seed=13), n_bootstrap=5, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        metrics.choose_thresholds(table)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["prob_epidural"]), "missing the columns prob_epidural"),
        (lambda t: t.assign(prob_subdural=t["prob_subdural"] * 3), "outside \\[0, 1\\]"),
        (lambda t: t.assign(epidural=2), "other than 0 and 1"),
        (lambda t: t.assign(image_id="ID_same"), "duplicated image ids: ID_same"),
    ],
)
def test_invalid_prediction_table_raises(change, message):
    with pytest.raises(ValueError, match=message):
        metrics.check_prediction_table(change(random_table(seed=14)))


def test_empty_test_table_raises():
    table = random_table(seed=15)
    with pytest.raises(ValueError, match="no rows"):
        metrics.evaluate(table, table.iloc[:0], n_bootstrap=5, progress=False)


def test_join_labels_names_missing_ids():
    table = random_table(n_patients=3, slices=2, seed=16)
    predictions = table.drop(columns=list(SUBTYPES))
    labels = table[["image_id", *SUBTYPES]].copy()
    labels.loc[0, "image_id"] = "ID_only_labelled"
    with pytest.raises(ValueError, match=r"no label \(ID_000000\).*no prediction \(ID_only_labelled\)"):
        metrics.join_labels(predictions, labels)


def test_join_labels_matches_by_id():
    table = random_table(n_patients=3, slices=4, seed=17)
    predictions = table.drop(columns=list(SUBTYPES))
    labels = table[["image_id", *SUBTYPES]].set_index("image_id").iloc[::-1]  # indexed like read_labels
    joined = metrics.join_labels(predictions, labels)
    pd.testing.assert_frame_equal(joined[list(SUBTYPES)], table[list(SUBTYPES)])


# RSNA weighted log loss


def test_rsna_log_loss_weights_any_twice():
    labels = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]])
    probabilities = np.array(
        [[0.8, 0.1, 0.1, 0.1, 0.1], [0.2, 0.1, 0.3, 0.1, 0.05], [0.1, 0.6, 0.2, 0.7, 0.1]]
    )
    table = make_table(labels, probabilities)
    any_label = labels.max(axis=1)
    any_probability = probabilities.max(axis=1)  # derived as the maximum of the subtypes
    y = np.column_stack([labels, any_label])
    p = np.column_stack([probabilities, any_probability])
    per_column = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=0)
    expected = (per_column[:5].sum() + 2 * per_column[5]) / 7
    assert metrics.rsna_log_loss(table) == pytest.approx(expected)

    table["prob_any"] = [0.9, 0.1, 0.9]
    p[:, 5] = [0.9, 0.1, 0.9]
    per_column = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=0)
    assert metrics.rsna_log_loss(table) == pytest.approx((per_column[:5].sum() + 2 * per_column[5]) / 7)


def test_rsna_log_loss_uses_any_label_column():
    table = random_table(seed=18)
    derived = metrics.rsna_log_loss(table)
    table["any"] = table[list(SUBTYPES)].max(axis=1)
    assert metrics.rsna_log_loss(table) == pytest.approx(derived)
    table["any"] = 1
    assert metrics.rsna_log_loss(table) != pytest.approx(derived)


# Reference table and the side-by-side F1 table


def test_reference_values_from_the_poster():
    assert list(reference.REFERENCE_F1.index) == list(SUBTYPES)
    assert list(reference.REFERENCE_F1.columns) == ["2D", "2.5D", "LSTM"]
    assert reference.REFERENCE_F1.loc["epidural"].tolist() == [0.75, 0.75, 0.77]
    assert reference.REFERENCE_F1.loc["subdural"].tolist() == [0.79, 0.80, 0.84]
    assert reference.REFERENCE_SLICE_COUNTS["epidural"] == 240
    assert sum(reference.REFERENCE_SLICE_COUNTS.values()) == 240 + 2853 + 1962 + 2627 + 3180
    assert "Forsberg" in reference.REFERENCE_SOURCE


def test_f1_table_layout_and_values():
    val, test = random_table(seed=19), random_table(seed=20)
    result = metrics.evaluate(val, test, n_bootstrap=20, progress=False)
    test_without_epidural = test.assign(epidural=0)
    with pytest.warns(metrics.UndefinedClassWarning):
        partial = metrics.evaluate(val, test_without_epidural, n_bootstrap=20, progress=False)
    table = metrics.f1_table({"series": result, "lstm": partial, "2d": result}, macro=True)
    assert list(table.columns) == ["2D", "LSTM", "series", "reference 2D", "reference 2.5D", "reference LSTM"]
    assert list(table.index[:5]) == list(SUBTYPES)
    assert table.index[5] == "macro (4/5 of 5 classes)"
    row = result.loc["subdural"]
    assert table.at["subdural", "2D"] == f"{row['f1']:.2f} [{row['f1_lo']:.2f}, {row['f1_hi']:.2f}]"
    assert re.fullmatch(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", table.at["intraventricular", "series"])
    assert table.at["epidural", "LSTM"] == "undefined"
    assert table.at["epidural", "reference LSTM"] == "0.77"


def test_f1_table_without_reference():
    result = metrics.evaluate(random_table(seed=21), random_table(seed=22), n_bootstrap=0, progress=False)
    table = metrics.f1_table({"2D": result}, reference=False)
    assert list(table.columns) == ["2D"]
    assert table.at["epidural", "2D"] == f"{result.at['epidural', 'f1']:.2f}"  # no interval without replicates


def test_markdown_and_csv_writers(tmp_path):
    table = pd.DataFrame({"2D": ["0.75 [0.70, 0.80]", "a|b"]}, index=pd.Index(["epidural", "subdural"], name="subtype"))
    markdown = metrics.table_to_markdown(table)
    assert markdown.splitlines() == [
        "| subtype | 2D |",
        "| --- | --- |",
        "| epidural | 0.75 [0.70, 0.80] |",
        "| subdural | a\\|b |",
    ]
    markdown_path, csv_path = metrics.write_f1_table(table, tmp_path / "out")
    assert markdown_path.read_text() == markdown + "\n"
    pd.testing.assert_frame_equal(pd.read_csv(csv_path, index_col="subtype"), table)
