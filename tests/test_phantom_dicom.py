"""Generated DICOM files: headers, geometry, pixel encodings, RSNA quirks and readback to HU."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from ichlab.phantom import generate_dataset
from ichlab.phantom.plan import PhantomSettings, plan_dataset
from ichlab.phantom.quirks import QUIRK_NAMES
from ichlab.phantom.render import render_series


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    """Ten patients at 48 px with every quirk, and the true HU of each image id."""
    root = generate_dataset(tmp_path_factory.mktemp("phantom") / "quirky", 10, seed=7, image_size=48, slices_per_series=(6, 8), quirks=True, progress=False)
    record = json.loads((root / "phantom.json").read_text())
    settings = dict(record["settings"], slices_per_series=tuple(record["settings"]["slices_per_series"]))
    true_hu = {}
    for plan in plan_dataset(PhantomSettings(**settings)).series:
        rendered = render_series(plan, settings["difficulty"])
        true_hu.update(zip(plan.image_ids, rendered.hu))
    return root, record, true_hu


def _files(root):
    return sorted((root / "stage_2_train").glob("*.dcm"))


def _readable(root, record):
    truncated = set(record["quirk_images"]["truncated_file"])
    return [path for path in _files(root) if path.stem not in truncated]


def test_file_meta_is_ct_explicit_little_endian(quirky):
    root, record, _ = quirky
    for path in _readable(root, record):
        assert path.read_bytes()[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT"


def test_identifiers_group_slices_into_series(quirky):
    root, record, _ = quirky
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in _files(root)]
    table = pd.DataFrame(
        {
            "patient": [ds.PatientID for ds in headers],
            "study": [ds.StudyInstanceUID for ds in headers],
            "series": [ds.SeriesInstanceUID for ds in headers],
            "sop": [ds.SOPInstanceUID for ds in headers],
            "frame": [ds.FrameOfReferenceUID for ds in headers],
        }
    )
    assert table["sop"].is_unique
    assert table["series"].nunique() == table["patient"].nunique() == table["study"].nunique() == 10
    assert (table.groupby("series")[["patient", "study", "frame"]].nunique() == 1).all().all()
    assert all(pydicom.uid.UID(uid).is_valid for uid in table["sop"])


def test_positions_step_5mm_along_normal(quirky):
    root, _, _ = quirky
    by_series = {}
    for path in _files(root):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    tilted = 0
    for headers in by_series.values():
        orientation = np.array(headers[0].ImageOrientationPatient, dtype=float)
        row, column = orientation[:3], orientation[3:]
        assert np.isclose(np.linalg.norm(row), 1)
        assert np.isclose(np.linalg.norm(column), 1)
        assert abs(row @ column) < 1e-6
        normal = np.cross(row, column)
        along = np.sort([np.array(ds.ImagePositionPatient, dtype=float) @ normal for ds in headers])
        assert np.allclose(np.diff(along), 5.0, atol=1e-3)
        assert all(float(ds.SliceThickness) == 5.0 for ds in headers)
        tilted += abs(column[2]) > 0.05
    assert tilted >= 1, "no series with a gantry tilt"


def test_pixel_spacing_keeps_head_size(quirky):
    root, _, _ = quirky
    for path in _files(root)[::7]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        spacing = [float(value) for value in ds.PixelSpacing]
        assert spacing[0] == spacing[1]
        assert 200 <= spacing[1] * ds.Rows <= 260, "field of view across the rows, mm"


def test_every_quirk_occurs(quirky):
    _, record, _ = quirky
    assert set(record["quirk_images"]) == set(QUIRK_NAMES)
    assert all(record["quirk_images"][name] for name in QUIRK_NAMES)


def test_wrapped_12bit_headers_and_values(quirky):
    root, record, true_hu = quirky
    image_id = record["quirk_images"]["wrapped_12bit"][0]
    ds = pydicom.dcmread(root / "stage_2_train" / f"{image_id}.dcm")
    assert (ds.BitsStored, ds.PixelRepresentation, float(ds.RescaleIntercept)) == (12, 0, 0.0)
    stored = ds.pixel_array.astype(np.int32)
    assert stored.max() >= 3096, "air should be stored wrapped, as 3096 and above"
    # The fix used for the RSNA data: add 1000, wrap modulo 4096, then intercept -1000.
    fixed = (stored + 1000) % 4096 - 1000
    assert np.array_equal(fixed, true_hu[image_id])


def test_window_tag_quirks(quirky):
    root, record, _ = quirky
    multivalue = pydicom.dcmread(root / "stage_2_train" / f"{record['quirk_images']['window_multivalue'][0]}.dcm")
    assert isinstance(multivalue.WindowCenter, MultiValue) and len(multivalue.WindowCenter) == 2
    padded_id = record["quirk_images"]["window_zero_padded"][0]
    padded = pydicom.dcmread(root / "stage_2_train" / f"{padded_id}.dcm")
    center = padded.WindowCenter[0] if isinstance(padded.WindowCenter, MultiValue) else padded.WindowCenter
    assert str(center).startswith("000")
    assert float(center) in (30.0, 36.0, 40.0)


def test_size_quirks(quirky):
    root, record, true_hu = quirky
    odd = pydicom.dcmread(root / "stage_2_train" / f"{record['quirk_images']['odd_size'][0]}.dcm")
    assert odd.Rows == odd.Columns != 48
    wide_id = record["quirk_images"]["non_square"][0]
    wide = pydicom.dcmread(root / "stage_2_train" / f"{wide_id}.dcm")
    assert wide.Columns > wide.Rows
    assert true_hu[wide_id].shape == (wide.Rows, wide.Columns)


def test_missing_instance_number(quirky):
    root, record, _ = quirky
    for image_id in record["quirk_images"]["missing_instance_number"]:
        assert "InstanceNumber" not in pydicom.dcmread(root / "stage_2_train" / f"{image_id}.dcm", stop_before_pixels=True)
    clean_id = next(path.stem for path in _readable(root, record) if path.stem not in record["quirk_images"]["missing_instance_number"])
    assert "InstanceNumber" in pydicom.dcmread(root / "stage_2_train" / f"{clean_id}.dcm", stop_before_pixels=True)


def test_duplicated_label_rows(quirky):
    root, record, _ = quirky
    labels = pd.read_csv(root / "stage_2_train.csv")
    duplicated = labels[labels.duplicated(keep=False)]
    image_ids = set(duplicated["ID"].str.rsplit("_", n=1).str[0])
    assert image_ids == set(record["quirk_images"]["duplicate_label_row"])
    assert len(duplicated) == 2 * 6 * len(image_ids)


def test_truncated_file_is_short(quirky):
    root, record, _ = quirky
    image_id = record["quirk_images"]["truncated_file"][0]
    ds = pydicom.dcmread(root / "stage_2_train" / f"{image_id}.dcm")
    assert len(ds.PixelData) < ds.Rows * ds.Columns * 2


def test_clean_encodings_give_hu_with_modality_lut(quirky):
    root, record, true_hu = quirky
    wrapped = set(record["quirk_images"]["wrapped_12bit"])
    encodings = set()
    for path in _readable(root, record):
        if path.stem in wrapped:
            continue
        ds = pydicom.dcmread(path)
        encodings.add((ds.BitsStored, ds.PixelRepresentation, float(ds.RescaleIntercept)))
        assert np.array_equal(apply_modality_lut(ds.pixel_array, ds), true_hu[path.stem]), path.name
    assert len(encodings) >= 2, "series should use more than one scanner encoding"


def test_load_hu_reads_back_every_file(quirky):
    dicom = pytest.importorskip("ichlab.dicom")
    root, record, true_hu = quirky
    truncated = set(record["quirk_images"]["truncated_file"])
    for path in _files(root):
        if path.stem in truncated:
            with pytest.raises(dicom.DicomError, match="truncated"):
                dicom.load_hu(path)
            continue
        hu = dicom.load_hu(path)
        assert hu.dtype == np.float32
        assert np.array_equal(hu, true_hu[path.stem].astype(np.float32)), path.name


def test_read_window_tags_handles_quirks(quirky):
    dicom = pytest.importorskip("ichlab.dicom")
    root, record, _ = quirky
    for name in ("window_multivalue", "window_zero_padded"):
        ds = pydicom.dcmread(root / "stage_2_train" / f"{record['quirk_images'][name][0]}.dcm", stop_before_pixels=True)
        center, width = dicom.read_window_tags(ds)
        assert center in (30.0, 36.0, 40.0)
        assert width == 80.0
