"""Tests for the RSNA label CSV reader, the Kaggle layout finder and the patient subset."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from ichlab import LABEL_COLUMNS, SUBTYPES
from ichlab.rsna import (
    LabelError,
    attach_labels,
    find_layout,
    format_slice_counts,
    read_labels,
    select_subset,
)


def write_csv(path, rows):
    path.write_text("ID,Label\n" + "".join(f"{image_and_subtype},{label}\n" for image_and_subtype, label in rows))
    return path


def label_rows(image_id, positive=()):
    rows = [(f"{image_id}_{name}", int(name in positive)) for name in SUBTYPES]
    rows.append((f"{image_id}_any", int(bool(positive))))
    return rows


def test_read_labels_one_row_per_image(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", label_rows("ID_63eb1e259", ["epidural"]) + label_rows("ID_2669954a7"))
    labels = read_labels(csv)
    assert labels.index.name == "image_id"
    assert list(labels.columns) == list(LABEL_COLUMNS)
    assert list(labels.index) == ["ID_63eb1e259", "ID_2669954a7"]
    assert labels.loc["ID_63eb1e259"].tolist() == [1, 0, 0, 0, 0, 1]
    assert labels.loc["ID_2669954a7"].sum() == 0
    assert all(dtype == np.int64 for dtype in labels.dtypes)


def test_read_labels_splits_id_once_from_right(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", label_rows("ID_ab_cd_ef", ["subdural"]))
    labels = read_labels(csv)
    assert list(labels.index) == ["ID_ab_cd_ef"]
    assert labels.loc["ID_ab_cd_ef", "subdural"] == 1


def test_read_labels_accepts_rows_in_any_order(tmp_path):
    rows = label_rows("ID_1", ["subarachnoid"]) + label_rows("ID_2")
    csv = write_csv(tmp_path / "labels.csv", rows[::-1])
    labels = read_labels(csv)
    assert labels.loc["ID_1", "subarachnoid"] == 1
    assert labels.loc["ID_2"].sum() == 0


def test_read_labels_drops_exact_duplicates(tmp_path, caplog):
    rows = label_rows("ID_1", ["epidural"])
    csv = write_csv(tmp_path / "labels.csv", rows + rows[:2])
    with caplog.at_level(logging.WARNING):
        labels = read_labels(csv)
    assert len(labels) == 1
    assert labels.attrs["duplicates_dropped"] == 2
    assert "dropped 2 row(s)" in caplog.text


def test_read_labels_rejects_conflicting_duplicate(tmp_path):
    rows = label_rows("ID_1") + [("ID_1_epidural", 1)]
    csv = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(LabelError, match=r"lines 2, 8 give ID_1_epidural different labels"):
        read_labels(csv)


def test_read_labels_rejects_unknown_subtype(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", label_rows("ID_1") + [("ID_1_hematoma", 0)])
    with pytest.raises(LabelError, match=r"line 8 \('ID_1_hematoma,0'\): unknown subtype"):
        read_labels(csv)


@pytest.mark.parametrize("bad_id", ["63eb1e259epidural", "ID_epidural", "IMG_1_epidural", "ID_1 x_epidural"])
def test_read_labels_rejects_malformed_id(tmp_path, bad_id):
    csv = write_csv(tmp_path / "labels.csv", label_rows("ID_1") + [(bad_id, 0)])
    with pytest.raises(LabelError, match=r"line 8 .*malformed id"):
        read_labels(csv)


def test_read_labels_rejects_label_not_binary(tmp_path):
    rows = label_rows("ID_1")
    rows[2] = (rows[2][0], 2)
    csv = write_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(LabelError, match=r"line 4 .*not 0 or 1"):
        read_labels(csv)


def test_read_labels_rejects_missing_subtype(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", label_rows("ID_1")[:-1])
    with pytest.raises(LabelError, match=r"image ID_1 has no row for subtype\(s\) any"):
        read_labels(csv)


def test_read_labels_rejects_missing_column(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("Image,Label\nID_1_any,0\n")
    with pytest.raises(LabelError, match="missing column"):
        read_labels(csv)


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="label CSV not found"):
        read_labels(tmp_path / "absent.csv")


def test_find_layout_flat_and_nested(tmp_path):
    flat = tmp_path / "flat"
    (flat / "stage_2_train").mkdir(parents=True)
    (flat / "stage_2_train.csv").write_text("ID,Label\n")
    assert find_layout(flat) == (flat / "stage_2_train", flat / "stage_2_train.csv")

    nested = tmp_path / "input" / "rsna-intracranial-hemorrhage-detection" / "rsna-intracranial-hemorrhage-detection"
    (nested / "stage_2_train").mkdir(parents=True)
    (nested / "stage_2_train.csv").write_text("ID,Label\n")
    assert find_layout(tmp_path / "input") == (nested / "stage_2_train", nested / "stage_2_train.csv")


def test_find_layout_missing_names_expected_files(tmp_path):
    (tmp_path / "stage_2_train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected stage_2_train/ with stage_2_train\.csv"):
        find_layout(tmp_path)


def test_attach_labels_by_stem_then_sop_uid(tmp_path):
    labels = read_labels(write_csv(tmp_path / "labels.csv", label_rows("ID_a", ["subdural"]) + label_rows("ID_b")))
    headers = pd.DataFrame(
        {
            "file": ["x/ID_a.dcm", "x/renamed.dcm", "x/ID_c.dcm"],
            "image_id": ["ID_a", "renamed", "ID_c"],
            "sop_uid": ["1.2.1", "ID_b", "1.2.3"],
            "patient_id": ["p1", "p1", "p2"],
        }
    )
    table, unlabelled = attach_labels(headers, labels)
    assert table["image_id"].tolist() == ["ID_a", "ID_b"]
    assert table["subdural"].tolist() == [1, 0]
    assert unlabelled["file"].tolist() == ["x/ID_c.dcm"]
    assert unlabelled["reason"].iloc[0] == "no row in the label CSV"


def synthetic_slice_table(n_patients=200, seed=1):
    """Patients with random subtypes; epidural is rare (four patients), as in RSNA."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_patients):
        present = {name: rng.random() < 0.15 for name in SUBTYPES}
        present["epidural"] = patient % 50 == 7
        for slice_index in range(int(rng.integers(3, 6))):
            row = {"patient_id": f"P{patient:03d}", "series_uid": f"S{patient:03d}", "slice_index": slice_index}
            row.update({name: int(present[name] and slice_index > 0) for name in SUBTYPES})
            rows.append(row)
    return pd.DataFrame(rows)


def test_select_subset_keeps_every_subtype(caplog):
    table = synthetic_slice_table()
    with caplog.at_level(logging.INFO):
        subset = select_subset(table, 20, seed=0)
    assert subset["patient_id"].nunique() == 20
    for name in SUBTYPES:
        assert subset[name].sum() > 0, name
    assert "20 patients" in caplog.text


def test_select_subset_keeps_whole_patients():
    table = synthetic_slice_table()
    subset = select_subset(table, 30, seed=0)
    slices_per_patient = table.groupby("patient_id").size()
    chosen = subset.groupby("patient_id").size()
    assert (chosen == slices_per_patient[chosen.index]).all()


def test_select_subset_deterministic_from_seed():
    table = synthetic_slice_table()
    first = set(select_subset(table, 30, seed=0)["patient_id"])
    again = set(select_subset(table, 30, seed=0)["patient_id"])
    other = set(select_subset(table, 30, seed=1)["patient_id"])
    assert first == again
    assert first != other


def test_select_subset_more_than_available_keeps_all(caplog):
    table = synthetic_slice_table(n_patients=10)
    with caplog.at_level(logging.WARNING):
        subset = select_subset(table, 50)
    assert len(subset) == len(table)
    assert "fewer than the 50 requested" in caplog.text


def test_format_slice_counts_reference_style():
    table = pd.DataFrame(
        {
            "patient_id": ["p1", "p1", "p2"],
            "epidural": [1, 0, 0],
            "intraparenchymal": [1, 1, 0],
            "intraventricular": [0, 0, 0],
            "subarachnoid": [0, 0, 1],
            "subdural": [0, 0, 0],
        }
    )
    assert format_slice_counts(table) == (
        "2 patients, 3 slices: epidural 1, intraparenchymal 2, intraventricular 0, subarachnoid 1, subdural 0"
    )
