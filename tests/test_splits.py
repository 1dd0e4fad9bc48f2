"""Tests for the patient-level split: proportions, stratification, determinism and leakage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichlab import SUBTYPES
from ichlab.splits import SPLITS, check_no_leakage, split_patients
from test_rsna import synthetic_slice_table


def test_split_sizes_follow_fractions():
    table = synthetic_slice_table(n_patients=200)
    split = split_patients(table, (0.6, 0.2, 0.2), seed=0)
    counts = split.value_counts()
    assert len(split) == 200
    assert abs(counts["train"] - 120) <= 1
    assert abs(counts["val"] - 40) <= 1
    assert abs(counts["test"] - 40) <= 1


def test_split_has_no_patient_or_series_leakage():
    table = synthetic_slice_table(n_patients=200)
    split = split_patients(table, seed=3)
    table["split"] = table["patient_id"].map(split)
    patients = {name: set(table.loc[table["split"] == name, "patient_id"]) for name in SPLITS}
    series = {name: set(table.loc[table["split"] == name, "series_uid"]) for name in SPLITS}
    for first in SPLITS:
        for second in SPLITS:
            if first < second:
                assert not patients[first] & patients[second], (first, second)
                assert not series[first] & series[second], (first, second)
    assert table["split"].notna().all()
    check_no_leakage(table)


def test_split_stratifies_each_subtype():
    table = synthetic_slice_table(n_patients=200)
    split = split_patients(table, seed=0)
    presence = table.groupby("patient_id")[list(SUBTYPES)].max()
    for name in SUBTYPES:
        positive = split[presence[name] > 0]
        assert set(positive) == set(SPLITS), name
        if len(positive) >= 20:
            assert 0.45 <= (positive == "train").mean() <= 0.75, name


def test_split_deterministic_from_seed():
    table = synthetic_slice_table(n_patients=100)
    first = split_patients(table, seed=0)
    assert first.equals(split_patients(table, seed=0))
    assert not first.equals(split_patients(table, seed=1))


def test_split_accepts_zero_fraction():
    table = synthetic_slice_table(n_patients=50)
    split = split_patients(table, (0.8, 0.2, 0.0))
    assert set(split) == {"train", "val"}
    assert (split == "train").sum() == 40


def test_check_no_leakage_rejects_shared_patient():
    table = pd.DataFrame(
        {"patient_id": ["p1", "p1", "p2"], "series_uid": ["s1", "s1", "s2"], "split": ["train", "test", "val"]}
    )
    with pytest.raises(ValueError, match=r"patient_id value\(s\) appear in more than one split, e.g. p1"):
        check_no_leakage(table)


def test_check_no_leakage_rejects_series_across_patients():
    table = pd.DataFrame(
        {"patient_id": ["p1", "p2"], "series_uid": ["s1", "s1"], "split": ["train", "test"]}
    )
    with pytest.raises(ValueError, match="series_uid"):
        check_no_leakage(table)


@pytest.mark.parametrize("fractions", [(0.5, 0.2, 0.2), (0.6, 0.4), (1.2, -0.1, -0.1)])
def test_split_rejects_invalid_fractions(fractions):
    with pytest.raises(ValueError, match="fractions must be three non-negative numbers"):
        split_patients(synthetic_slice_table(n_patients=10), fractions)


def test_split_rejects_missing_patient_column():
    table = synthetic_slice_table(n_patients=10).drop(columns="patient_id")
    with pytest.raises(ValueError, match="lacks column"):
        split_patients(table)


def test_split_covers_every_subtype_across_seeds():
    # 24 patients as in quick mode: each subtype with at least three positive patients must
    # reach train, val and test for any seed, not only for a lucky one.
    rng = np.random.default_rng(11)
    for seed in range(40):
        presence = pd.DataFrame(
            (rng.random((24, len(SUBTYPES))) < [0.25, 0.3, 0.3, 0.4, 0.5]).astype(int), columns=list(SUBTYPES)
        )
        presence["patient_id"] = [f"patient-{number:02d}" for number in range(24)]
        split = split_patients(presence, seed=seed)
        split_of_row = presence["patient_id"].map(split)
        for subtype in SUBTYPES:
            if presence[subtype].sum() < 3:
                continue
            assert set(split_of_row[presence[subtype] == 1]) == {"train", "val", "test"}, (seed, subtype)
