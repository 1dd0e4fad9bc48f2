"""Tests for ichlab.series: order along the slice normal, spacing report, neighbour windows."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ichlab.dicom import ct_slice_dataset, scan_headers
from ichlab.series import neighbour_indices, order_slices, series_report

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def header_table(positions, *, series_uid="1.2.3", orientation=AXIAL, sop_uids=None, slice_thickness=None):
    sop_uids = sop_uids or [f"1.2.3.{index}" for index in range(len(positions))]
    table = pd.DataFrame(
        {
            "file": [f"{uid}.dcm" for uid in sop_uids],
            "image_id": sop_uids,
            "series_uid": series_uid,
            "sop_uid": sop_uids,
            "position": [tuple(position) for position in positions],
            "orientation": [orientation] * len(positions),
        }
    )
    if slice_thickness is not None:
        table["slice_thickness"] = slice_thickness
    return table


def write_slice(path, *, series_uid, position, orientation, instance_number):
    ds = ct_slice_dataset(np.zeros((4, 4)), intercept=0, position=position, orientation=orientation, series_uid=series_uid)
    del ds.SliceThickness  # the slices carry no thickness, so ordering relies on positions alone
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.InstanceNumber = instance_number
    ds.save_as(path, enforce_file_format=True)


def test_order_by_position_not_input_order():
    table = header_table([(0, 0, 10.0), (0, 0, 0.0), (0, 0, 5.0)])
    ordered = order_slices(table)
    assert ordered["image_id"].tolist() == ["1.2.3.1", "1.2.3.2", "1.2.3.0"]
    assert ordered["slice_index"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(ordered["slice_position_mm"], [0.0, 5.0, 10.0])


def test_order_uses_normal_not_z():
    # Sagittal slices: the normal is x, and z is the same for every slice.
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    table = header_table([(3.0, 0, 0), (1.0, 0, 0), (2.0, 0, 0)], orientation=sagittal)
    ordered = order_slices(table)
    assert [position[0] for position in ordered["position"]] == [3.0, 2.0, 1.0]  # normal is -x


def test_order_ties_are_deterministic():
    positions = [(0, 0, 1.0), (0, 0, 1.0), (0, 0, 0.0)]
    table = header_table(positions, sop_uids=["1.9", "1.5", "1.7"])
    forward = order_slices(table)["sop_uid"].tolist()
    backward = order_slices(table.iloc[::-1])["sop_uid"].tolist()
    assert forward == ["1.7", "1.5", "1.9"]
    assert backward == forward


def test_order_groups_series():
    first = header_table([(0, 0, 2.0), (0, 0, 1.0)], series_uid="1.2")
    second = header_table([(0, 0, 0.0)], series_uid="1.1", sop_uids=["1.1.0"])
    ordered = order_slices(pd.concat([first, second], ignore_index=True))
    assert ordered["series_uid"].tolist() == ["1.1", "1.2", "1.2"]
    assert ordered["slice_index"].tolist() == [0, 0, 1]


def test_order_rejects_missing_position():
    table = header_table([(0, 0, 0.0), (0, 0, 1.0)])
    table.at[1, "position"] = None
    with pytest.raises(ValueError, match="1.2.3.1.dcm"):
        order_slices(table)


def test_report_regular_series():
    report = series_report(header_table([(0, 0, 5.0 * index) for index in range(6)]))
    row = report.loc["1.2.3"]
    assert row["n_slices"] == 6
    assert row["spacing_mm"] == pytest.approx(5.0)
    assert not row["irregular_spacing"]
    assert row["n_duplicates"] == 0
    assert row["n_near_duplicates"] == 0
    assert row["spacing_runs"] == [(5.0, 5)]


def test_report_duplicates_and_interleaved_stacks():
    duplicate = series_report(header_table([(0, 0, 0.0), (0, 0, 5.0), (0, 0, 5.0), (0, 0, 10.0)]))
    assert duplicate.loc["1.2.3", "n_duplicates"] == 1
    assert duplicate.loc["1.2.3", "irregular_spacing"]

    # Two stacks 5 mm apart, offset by 0.5 mm, stored as one series.
    positions = [(0, 0, 5.0 * index) for index in range(4)] + [(0, 0, 5.0 * index + 0.5) for index in range(4)]
    interleaved = series_report(header_table(positions, slice_thickness=5.0))
    assert interleaved.loc["1.2.3", "n_near_duplicates"] == 4
    assert interleaved.loc["1.2.3", "irregular_spacing"]


def test_report_thickness_change_is_not_near_duplicate():
    # 4 mm slices, then 7 mm slices: the gap between the two stacks is 1.1 mm.
    positions = [(0, 0, 4.0 * index) for index in range(3)] + [(0, 0, 9.1 + 7.0 * index) for index in range(3)]
    thickness = [4.0] * 3 + [7.0] * 3
    report = series_report(header_table(positions, slice_thickness=thickness))
    assert report.loc["1.2.3", "n_near_duplicates"] == 0
    assert report.loc["1.2.3", "spacing_runs"] == [(4.0, 2), (1.1, 1), (7.0, 2)]


def test_report_single_slice_series():
    report = series_report(header_table([(0, 0, 0.0)]))
    assert report.loc["1.2.3", "n_slices"] == 1
    assert np.isnan(report.loc["1.2.3", "spacing_mm"])
    assert not report.loc["1.2.3", "irregular_spacing"]


def test_neighbours_three():
    expected = [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    indices = neighbour_indices(5, 3)
    assert indices.dtype == np.int64
    assert indices.tolist() == expected


def test_neighbours_five_and_seven():
    assert neighbour_indices(3, 5).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2]]
    indices = neighbour_indices(10, 7)
    assert indices.shape == (10, 7)
    assert indices[5].tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert indices[:, 3].tolist() == list(range(10))


def test_neighbours_single_and_empty_series():
    assert neighbour_indices(1, 3).tolist() == [[0, 0, 0]]
    assert neighbour_indices(0, 3).shape == (0, 3)


@pytest.mark.parametrize("k", [0, 2, 4, -3])
def test_neighbours_reject_k(k):
    with pytest.raises(ValueError, match="odd"):
        neighbour_indices(5, k)


def test_written_tilted_series_orders_by_normal(tmp_path):
    # A 20 degree gantry tilt: z steps are 3 mm / cos(20 deg), the normal steps 3 mm.
    tilt = np.deg2rad(20.0)
    column = (0.0, np.cos(tilt), -np.sin(tilt))
    orientation = (1.0, 0.0, 0.0) + column
    normal = np.cross(orientation[:3], column)
    names = [f"{value:02d}" for value in range(8)]
    random.Random(3).shuffle(names)
    for index, name in enumerate(names):
        position = np.array([-100.0, -100.0, 0.0]) + 3.0 * index * normal
        # InstanceNumber runs backwards, so it cannot be what orders the slices.
        write_slice(tmp_path / f"{name}.dcm", series_uid="1.2.9", position=position, orientation=orientation, instance_number=8 - index)

    scan = scan_headers(tmp_path, progress=False)
    ordered = order_slices(scan.headers)
    assert ordered["image_id"].tolist() == names
    report = series_report(scan.headers)
    assert report.loc["1.2.9", "spacing_runs"] == [(3.0, 7)]


def test_real_tilted_series_with_shuffled_names(real_ct_series, tmp_path):
    files = sorted(real_ct_series.glob("*.dcm"))
    assert len(files) == 28
    shuffled_names = [f"ID_{value:04x}.dcm" for value in random.Random(7).sample(range(10_000), len(files))]
    original_of = {}
    for source, name in zip(files, shuffled_names):
        shutil.copyfile(source, tmp_path / name)
        original_of[name[:-4]] = source.stem

    scan = scan_headers(tmp_path, progress=False)
    assert len(scan.skipped) == 0
    ordered = order_slices(scan.headers)
    assert [original_of[image_id] for image_id in ordered["image_id"]] == [f"{value:02d}" for value in range(1, 29)]

    report = series_report(scan.headers)
    assert len(report) == 1
    assert report.iloc[0]["spacing_runs"] == [(4.0, 13), (1.08, 1), (7.0, 13)]
    assert report.iloc[0]["irregular_spacing"]
    assert report.iloc[0]["n_near_duplicates"] == 0

    # The z coordinate would give the wrong spacings: 4.22, 1.14 and 7.38 mm.
    z_steps = np.round(np.diff([position[2] for position in ordered["position"]]), 2)
    assert sorted(set(z_steps.tolist())) == [1.14, 4.22, 7.38]


def _write_series_with_damaged_slice(folder, damaged=2, n_slices=4):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    folder.mkdir()
    for index in range(n_slices):
        ds = ct_slice_dataset(np.full((8, 8), 1064), position=(0.0, 0.0, 5.0 * index), sop_uid=f"1.2.826.0.9.{index}")
        if index == damaged:  # a valid header over compressed pixel data that no decoder can read
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
            ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG stream \xff\xd9"])
            ds["PixelData"].VR = "OB"
        ds.save_as(folder / f"{index}.dcm", enforce_file_format=True)


def test_damaged_pixel_data_is_not_a_missing_decoder(tmp_path):
    from ichlab.dicom import DicomError, load_hu

    _write_series_with_damaged_slice(tmp_path / "series")
    with pytest.raises(DicomError, match="2.dcm: pixel data could not be decoded") as error:
        load_hu(tmp_path / "series" / "2.dcm")
    assert "pip install" not in str(error.value)


def test_read_series_skips_undecodable_slice(tmp_path, caplog):
    from ichlab.inference import read_series

    _write_series_with_damaged_slice(tmp_path / "series")
    ordered, hu, n_skipped = read_series(tmp_path / "series", 16)

    assert [Path(name).name for name in ordered["file"]] == ["0.dcm", "1.dcm", "3.dcm"]
    assert ordered["slice_index"].tolist() == [0, 1, 2]
    assert hu.shape == (3, 16, 16)
    assert n_skipped == 1
    assert "skipped" in caplog.text
    assert "2.dcm" in caplog.text
