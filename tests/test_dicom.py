"""Tests for ichlab.dicom: HU conversion on files with real-world quirks, and the header scan.

Each quirk is written into a small DICOM file with pydicom; compressed decoding uses the real
files shipped with pydicom and pydicom-data.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian

from ichlab import dicom_scan
from ichlab.dicom import HEADER_COLUMNS, DicomError, ct_slice_dataset, load_hu, read_dataset, read_window_tags, scan_headers
from ichlab.windows import stack_windows


def make_ct(words, *, pixel_representation=1, **options):
    """A single-slice CT dataset whose PixelData holds ``words`` as 16-bit values."""
    return ct_slice_dataset(words, signed=pixel_representation == 1, **options)


def write(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


def test_wrapped_12bit_unsigned(tmp_path):
    ds = make_ct([[3096, 40, 4095]], bits_stored=12, pixel_representation=0, intercept=0)
    hu = load_hu(write(ds, tmp_path / "wrapped.dcm"))
    assert hu.dtype == np.float32
    assert hu.tolist() == [[-1000.0, 40.0, -1.0]]


def test_wrapped_12bit_unsigned_intercept_one(tmp_path):
    ds = make_ct([[3096, 40, 4095]], bits_stored=12, pixel_representation=0, intercept=1)
    assert load_hu(write(ds, tmp_path / "wrapped.dcm")).tolist() == [[-1000.0, 40.0, -1.0]]


def test_12bit_unsigned_with_air_intercept_untouched(tmp_path):
    ds = make_ct([[1064, 0, 4095]], bits_stored=12, pixel_representation=0, intercept=-1024)
    assert load_hu(write(ds, tmp_path / "plain.dcm")).tolist() == [[40.0, -1024.0, 3071.0]]


def test_unsigned_16bit_negative_intercept(tmp_path):
    ds = make_ct([[0, 1000, 1064]], bits_stored=16, pixel_representation=0, intercept=-1024)
    hu = load_hu(write(ds, tmp_path / "unsigned.dcm"))
    assert hu.tolist() == [[-1024.0, -24.0, 40.0]]
    assert hu.max() < 30000


def test_signed_12bit_in_16bit_words(tmp_path):
    ds = make_ct([[0x0FFF, 0xFFFF, 0x0028]], bits_stored=12, pixel_representation=1, intercept=0)
    assert load_hu(write(ds, tmp_path / "signed12.dcm")).tolist() == [[-1.0, -1.0, 40.0]]


def test_unsigned_garbage_above_high_bit_masked(tmp_path):
    ds = make_ct([[0xF000 | 1064, 0x3000 | 24]], bits_stored=12, pixel_representation=0, intercept=-1024)
    assert load_hu(write(ds, tmp_path / "garbage.dcm")).tolist() == [[40.0, -1000.0]]


@pytest.mark.parametrize("padding", [-1500, -2000])
def test_pixel_padding_becomes_air(tmp_path, padding):
    ds = make_ct([[padding, 40, padding]], intercept=0)
    ds.add_new(0x00280120, "SS", padding)  # PixelPaddingValue
    hu = load_hu(write(ds, tmp_path / "padded.dcm"))
    assert hu.tolist() == [[-1024.0, 40.0, -1024.0]]
    assert load_hu(tmp_path / "padded.dcm", pad_value=-1000.0).tolist() == [[-1000.0, 40.0, -1000.0]]


def test_pixel_padding_range(tmp_path):
    ds = make_ct([[-2000, -1800, -1500, 40]], intercept=0)
    ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
    ds.add_new(0x00280121, "SS", -1800)  # PixelPaddingRangeLimit
    assert load_hu(write(ds, tmp_path / "range.dcm")).tolist() == [[-1024.0, -1024.0, -1500.0, 40.0]]


def test_missing_rescale_reads_as_identity(tmp_path, caplog):
    ds = make_ct([[0, 40]], intercept=None, slope=None)
    with caplog.at_level(logging.WARNING, logger="ichlab.dicom"):
        hu = load_hu(write(ds, tmp_path / "norescale.dcm"))
    assert hu.tolist() == [[0.0, 40.0]]
    assert sum("RescaleSlope" in record.getMessage() for record in caplog.records) == 1


def test_empty_rescale_reads_as_identity(tmp_path):
    ds = make_ct([[0, 40]], intercept=None, slope=None)
    ds.RescaleIntercept = ""
    ds.RescaleSlope = ""
    assert load_hu(write(ds, tmp_path / "empty.dcm"), warn_missing_rescale=False).tolist() == [[0.0, 40.0]]


def test_missing_rescale_warns_once_per_scan(tmp_path, caplog):
    for index in range(3):
        ds = make_ct([[0, 40]], intercept=None, slope=None, position=(0, 0, float(index)))
        write(ds, tmp_path / f"ID_{index}.dcm")
    with caplog.at_level(logging.WARNING, logger="ichlab.dicom"):
        scan = scan_headers(tmp_path, progress=False)
        for path in scan.headers["file"]:
            load_hu(path, warn_missing_rescale=False)
    messages = [record.getMessage() for record in caplog.records if "RescaleSlope" in record.getMessage()]
    assert len(messages) == 1
    assert "3 of 3 files" in messages[0]
    assert scan.n_missing_rescale == 3
    assert scan.headers["rescale_missing"].all()


def test_truncated_pixel_data(tmp_path):
    ds = make_ct(np.zeros((1, 1)))
    ds.Rows = ds.Columns = 512
    ds.PixelData = bytes(153_710)
    path = write(ds, tmp_path / "ID_6431af929.dcm")
    with pytest.raises(DicomError, match=r"ID_6431af929\.dcm.*153710 bytes, 524288 expected"):
        load_hu(path)


def test_scan_skips_truncated_and_bad_files(tmp_path):
    ds = make_ct(np.zeros((1, 1)))
    ds.Rows = ds.Columns = 512
    ds.PixelData = bytes(153_710)
    write(ds, tmp_path / "truncated.dcm")
    (tmp_path / "notes.dcm").write_text("not a DICOM file")
    write(make_ct([[40]], modality="MR"), tmp_path / "mr.dcm")
    write(make_ct([[40]]), tmp_path / "good.dcm")

    scan = scan_headers(tmp_path, progress=False)
    assert scan.headers["image_id"].tolist() == ["good"]
    reasons = dict(zip(scan.skipped["file"].map(lambda file: file.rsplit("/", 1)[-1]), scan.skipped["reason"]))
    assert set(reasons) == {"truncated.dcm", "notes.dcm", "mr.dcm"}
    assert "524288 expected" in reasons["truncated.dcm"]
    assert "Modality MR" in reasons["mr.dcm"]
    assert "notes.dcm: not a DICOM file" in reasons["notes.dcm"]


def test_scan_header_columns(tmp_path):
    write(make_ct([[40, 41]], position=(1.0, 2.0, 3.0)), tmp_path / "ID_a.dcm")
    headers = scan_headers(tmp_path, progress=False).headers
    assert tuple(headers.columns[: len(HEADER_COLUMNS)]) == HEADER_COLUMNS
    row = headers.iloc[0]
    assert row["image_id"] == "ID_a"
    assert row["position"] == (1.0, 2.0, 3.0)
    assert row["orientation"] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert row["pixel_spacing"] == (0.5, 0.5)
    assert (row["rows"], row["columns"]) == (1, 2)
    assert (row["intercept"], row["slope"]) == (-1024.0, 1.0)
    assert (row["bits_stored"], row["pixel_representation"]) == (16, 1)
    assert row["modality"] == "CT"


def test_scan_in_worker_processes(tmp_path, monkeypatch):
    for index in range(6):
        write(make_ct([[index]], position=(0, 0, float(index))), tmp_path / f"ID_{index}.dcm")
    (tmp_path / "ID_bad.dcm").write_bytes(b"\x00" * 10)
    monkeypatch.setattr(dicom_scan, "PARALLEL_MIN_FILES", 0)
    monkeypatch.setattr(dicom_scan, "_CHUNK_FILES", 2)
    scan = scan_headers(tmp_path, workers=2, progress=False)
    assert scan.headers["image_id"].tolist() == [f"ID_{index}" for index in range(6)]
    assert len(scan.skipped) == 1


def test_scan_rejects_missing_folder(tmp_path):
    with pytest.raises(NotADirectoryError, match="missing"):
        scan_headers(tmp_path / "missing")


def test_big_endian_matches_little_endian(tmp_path):
    words = np.array([[-1024, 0, 40, 1500]])
    little = make_ct(words, intercept=0)
    write(little, tmp_path / "little.dcm")

    big = make_ct(words, intercept=0)
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    big.PixelData = (words & 0xFFFF).astype(">u2").tobytes()
    big.save_as(tmp_path / "big.dcm", enforce_file_format=True, little_endian=False, implicit_vr=False)
    assert pydicom.dcmread(tmp_path / "big.dcm").file_meta.TransferSyntaxUID == ExplicitVRBigEndian

    np.testing.assert_array_equal(load_hu(tmp_path / "big.dcm"), load_hu(tmp_path / "little.dcm"))
    assert load_hu(tmp_path / "big.dcm").tolist() == [[-1024.0, 0.0, 40.0, 1500.0]]


@pytest.mark.parametrize("hu_value", [-1024, 40])
def test_constant_image_windows(tmp_path, hu_value):
    ds = make_ct(np.full((4, 4), hu_value + 1024), pixel_representation=0, intercept=-1024)
    channels = stack_windows(load_hu(write(ds, tmp_path / "constant.dcm")))
    assert not np.isnan(channels).any()
    expected = (0.5, 0.3, 0.3) if hu_value == 40 else (0.0, 0.0, 0.0)
    np.testing.assert_allclose(channels[:, 0, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("modality", ["MR", "US", "OT"])
def test_non_ct_modality_rejected(tmp_path, modality):
    path = write(make_ct([[40]], modality=modality), tmp_path / "other.dcm")
    with pytest.raises(DicomError, match=f"other.dcm: Modality {modality}; ichlab reads CT images only"):
        load_hu(path)


def test_rgb_rejected():
    with pytest.raises(DicomError, match="SC_rgb.dcm: Modality OT"):
        load_hu(get_testdata_file("SC_rgb.dcm", download=False))
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm", download=False))
    ds.Modality = "CT"
    with pytest.raises(DicomError, match="3 samples per pixel, PhotometricInterpretation RGB"):
        load_hu(ds)


def test_ultrasound_jpeg2000_rejected():
    with pytest.raises(DicomError, match="Modality US"):
        load_hu(get_testdata_file("US1_J2KR.dcm", download=False))


def test_dataset_without_transfer_syntax_rejected():
    ds = make_ct([[40]])
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(DicomError, match="TransferSyntaxUID is missing"):
        load_hu(ds)


def test_unreadable_file_names_file(tmp_path):
    path = tmp_path / "ID_broken.dcm"
    path.write_bytes(b"DICM" * 3)
    with pytest.raises(DicomError, match="ID_broken.dcm"):
        load_hu(path)


@pytest.mark.parametrize("content", [b"", b"patient,label\nID_1,0\n", bytes(range(256)) * 8])
def test_non_dicom_file_named_as_such(tmp_path, content):
    path = tmp_path / "notes.dcm"
    path.write_bytes(content)
    with pytest.raises(DicomError, match="notes.dcm: not a DICOM file"):
        load_hu(path)


def test_dicom_without_preamble_still_reads(tmp_path):
    source = read_dataset(get_testdata_file("CT_small.dcm", download=False))
    source.preamble = None  # anonymised sets often drop the 128-byte preamble and "DICM"
    path = tmp_path / "no_preamble.dcm"
    source.save_as(path, enforce_file_format=False)
    assert b"DICM" not in path.read_bytes()[:132]
    assert load_hu(path).shape == (128, 128)


@pytest.mark.parametrize(("implicit_vr", "little_endian"), [(True, True), (False, True), (False, False)])
def test_dicom_without_file_meta_decodes(tmp_path, implicit_vr, little_endian):
    ds = make_ct([[0, 40, 1064]], little_endian=little_endian)  # PixelData bytes in the file's byte order
    del ds.file_meta
    ds.preamble = None
    path = tmp_path / "no_meta.dcm"
    ds.save_as(path, implicit_vr=implicit_vr, little_endian=little_endian, enforce_file_format=False)

    assert load_hu(path).tolist() == [[-1024.0, -984.0, 40.0]]
    assert scan_headers(tmp_path, progress=False).headers["image_id"].tolist() == ["no_meta"]


def test_jpeg2000_ct_matches_uncompressed():
    compressed = load_hu(get_testdata_file("693_J2KR.dcm", download=False))
    uncompressed = load_hu(get_testdata_file("693_UNCR.dcm", download=False))
    assert compressed.shape == (512, 512)
    np.testing.assert_array_equal(compressed, uncompressed)


def test_jpeg_lossless_ct_decodes():
    # Unsigned 12-bit JPEG Lossless CT with intercept -1024: not a wrapped file.
    hu = load_hu(get_testdata_file("bad_sequence.dcm", download=False))
    assert hu.shape == (512, 512)
    assert -1100 < hu.min() < -900
    assert 1000 < hu.max() < 3100


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_compressed_mr_rejected_after_decoding_path(name):
    with pytest.raises(DicomError, match="Modality MR"):
        load_hu(get_testdata_file(name, download=False))


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm"])
def test_compressed_decoding_matches_uncompressed(name):
    # The same 64 x 64 image in other transfer syntaxes, relabelled CT to reach the decoder.
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    other = pydicom.dcmread(get_testdata_file(name, download=False))
    reference.Modality = other.Modality = "CT"
    expected = load_hu(reference, warn_missing_rescale=False)
    np.testing.assert_array_equal(load_hu(other, warn_missing_rescale=False), expected)


def test_missing_decoder_names_package():
    ds = pydicom.dcmread(get_testdata_file("693_J2KR.dcm", download=False))
    ds.pixel_array_options(decoding_plugin="gdcm")  # GDCM is not installed
    with pytest.raises(DicomError, match="pip install pylibjpeg-openjpeg"):
        load_hu(ds)


def test_rsna_ids_read_without_warnings(tmp_path, caplog):
    with pydicom.config.disable_value_validation():
        ds = make_ct([[40]], sop_uid="ID_6431af929", series_uid="ID_5ab1e2c3d4")
        ds.StudyInstanceUID = "ID_0f9e8d7c6b"
        write(ds, tmp_path / "ID_6431af929.dcm")
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        hu = load_hu(tmp_path / "ID_6431af929.dcm")
        scan = scan_headers(tmp_path, progress=False)
    assert hu.tolist() == [[-984.0]]
    assert scan.headers["series_uid"].tolist() == ["ID_5ab1e2c3d4"]
    assert [str(warning.message) for warning in caught] == []
    assert [record.getMessage() for record in caplog.records] == []


def test_window_tags_single_multi_padded_absent():
    ds = Dataset()
    assert read_window_tags(ds) == (None, None)
    ds.WindowCenter = "00036"
    ds.WindowWidth = "00080"
    assert read_window_tags(ds) == (36.0, 80.0)
    ds.WindowCenter = [40, 300]
    ds.WindowWidth = [80, 1500]
    assert read_window_tags(ds) == (40.0, 80.0)
    ds.WindowCenter = ""
    assert read_window_tags(ds) == (None, 80.0)


def test_window_tags_on_real_multivalue_file():
    ds = pydicom.dcmread(get_testdata_file("J2K_pixelrep_mismatch.dcm", download=False), stop_before_pixels=True)
    center, width = read_window_tags(ds)
    assert isinstance(center, float)
    assert isinstance(width, float)
    assert center == float(ds.WindowCenter[0])


def test_real_ct_hu_range(real_ct_series):
    hu = load_hu(real_ct_series / "01.dcm")
    assert hu.shape == (512, 512)
    assert hu.min() == -1024.0  # PixelPaddingValue -1500 outside the field of view became air
    assert 1000 < hu.max() < 3100


def test_scan_command_reports_and_writes_csv(tmp_path, capsys):
    import argparse

    import pandas as pd

    from ichlab.commands import scan as scan_command

    folder = tmp_path / "series"
    folder.mkdir()
    for index in (2, 0, 1):
        write(make_ct([[40]], position=(0, 0, 5.0 * index)), folder / f"ID_{index}.dcm")
    (folder / "ID_bad.dcm").write_text("not DICOM")
    parser = argparse.ArgumentParser()
    scan_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["scan", str(folder), "--out", str(tmp_path / "headers.csv"), "--no-progress"])

    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "3 CT slices read, 1 files skipped" in printed
    assert "3 slices, spacing 2 x 5 mm" in printed
    assert "ID_bad.dcm" in printed
    table = pd.read_csv(tmp_path / "headers.csv")
    assert table["image_id"].tolist() == ["ID_0", "ID_1", "ID_2"]
    assert table["slice_index"].tolist() == [0, 1, 2]


def test_scan_command_fails_without_slices(tmp_path, capsys):
    import argparse

    from ichlab.commands import scan as scan_command

    parser = argparse.ArgumentParser()
    scan_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["scan", str(tmp_path), "--no-progress"])
    assert args.run(args) == 2
    assert "error: no readable CT slices" in capsys.readouterr().err


def test_write_ct_slice_round_trip(tmp_path):
    from ichlab.dicom import write_ct_slice

    path = write_ct_slice(
        tmp_path / "ID_1.dcm", [[-1500, 40]], intercept=0, padding_value=-1500, little_endian=False, sop_uid="ID_1"
    )
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert ds.PixelPaddingValue == -1500
    assert load_hu(path).tolist() == [[-1024.0, 40.0]]

    unsigned = write_ct_slice(tmp_path / "ID_2.dcm", [[3096]], bits_stored=12, signed=False, intercept=None, slope=None)
    ds = pydicom.dcmread(unsigned)
    assert "RescaleIntercept" not in ds
    assert (ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (12, 11, 0)
