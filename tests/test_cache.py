"""Tests for the slice cache: content, reuse, resume after interruption, skipped files, prepare_data.

The tests write small real CT series with pydicom in the Kaggle layout. Each slice shows an
L-shaped block of ``block_hu(patient, slice_index)`` HU on air, so the value in a cached slice
identifies the file it came from.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ichlab import LABEL_COLUMNS, SUBTYPES
from ichlab.cache import CacheError, SliceCache, build_cache
from ichlab.config import get_config
from ichlab.data import prepare_data
from ichlab.dicom import ct_slice_dataset, scan_headers
from ichlab.geometry import to_square
from ichlab.phantom import load_masks
from ichlab.rsna import attach_labels, find_layout, read_labels
from ichlab.series import order_slices
from ichlab.splits import split_patients

PIXELS = 24
SLICES_PER_PATIENT = (5, 4, 6, 5, 4, 6)


def block_hu(patient: int, slice_index: int) -> int:
    return 100 + 100 * patient + 10 * slice_index


def slice_pixels(patient: int, slice_index: int) -> np.ndarray:
    hu = np.full((PIXELS, PIXELS), -1000, dtype=np.int16)
    hu[4:20, 4:9] = block_hu(patient, slice_index)  # vertical bar of the L
    hu[15:20, 4:16] = block_hu(patient, slice_index)  # foot of the L, to the right
    return hu


def write_ct(path: Path, hu: np.ndarray, *, patient_id: str, series_uid: str, sop_uid: str, z_mm: float) -> None:
    stored = hu.astype(np.int32) + 1024  # RescaleIntercept -1024
    ds = ct_slice_dataset(stored, series_uid=series_uid, sop_uid=sop_uid, position=(-60.0, -60.0, z_mm))
    ds.PatientID = patient_id
    ds.StudyInstanceUID = series_uid + ".0"
    ds.save_as(path, enforce_file_format=True)


def write_kaggle_folder(root: Path, slices_per_patient=SLICES_PER_PATIENT) -> Path:
    """Write one series per patient in the Kaggle layout; file names do not follow slice order."""
    dicom_dir = root / "stage_2_train"
    dicom_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_rows = []
    for patient, n_slices in enumerate(slices_per_patient):
        subtype = SUBTYPES[patient % len(SUBTYPES)]
        for slice_index in range(n_slices):
            image_id = f"ID_{rng.integers(16**8):08x}"
            write_ct(
                dicom_dir / f"{image_id}.dcm",
                slice_pixels(patient, slice_index),
                patient_id=f"PAT{patient}",
                series_uid=f"1.2.826.0.1.{patient}",
                sop_uid=f"1.2.826.0.2.{patient}.{slice_index}",
                z_mm=5.0 * slice_index,
            )
            positive = slice_index in (1, 2)
            for name in LABEL_COLUMNS:
                label_rows.append(f"{image_id}_{name},{int(positive and name in (subtype, 'any'))}\n")
    (root / "stage_2_train.csv").write_text("ID,Label\n" + "".join(label_rows))
    return root


def slice_table(root: Path, fractions=(0.6, 0.2, 0.2)) -> tuple[pd.DataFrame, pd.DataFrame]:
    dicom_dir, labels_csv = find_layout(root)
    scan = scan_headers(dicom_dir, progress=False, workers=1)
    table, _ = attach_labels(order_slices(scan.headers), read_labels(labels_csv))
    table["split"] = table["patient_id"].map(split_patients(table, fractions))
    return table, scan.skipped


@pytest.fixture(scope="module")
def kaggle_folder(tmp_path_factory) -> Path:
    return write_kaggle_folder(tmp_path_factory.mktemp("rsna"))


def expected_block(index: pd.DataFrame) -> np.ndarray:
    patients = index["patient_id"].str.removeprefix("PAT").astype(int).to_numpy()
    return np.array([block_hu(p, s) for p, s in zip(patients, index["slice_index"])])


def test_cache_content_matches_dicom(kaggle_folder, tmp_path):
    table, skipped = slice_table(kaggle_folder)
    cache = build_cache(table, tmp_path / "cache", 16, skipped=skipped, progress=False)
    assert cache.hu.shape == (sum(SLICES_PER_PATIENT), 16, 16)
    assert cache.hu.dtype == np.int16
    assert isinstance(cache.hu, np.memmap)
    assert list(cache.index.columns) == [
        "image_id", "patient_id", "series_uid", "slice_index", "split", *LABEL_COLUMNS, "has_mask"
    ]
    assert cache.image_size == 16
    assert cache.masks is None
    assert len(cache.skipped) == 0
    # The block keeps its HU after resizing 24 -> 16 px: its centre pixel is far from any edge.
    assert (cache.hu[:, 10, 4] == expected_block(cache.index)).all()
    assert cache.hu[:, 1, 14].max() == -1000


def test_cache_series_contiguous_and_ordered(kaggle_folder, tmp_path):
    table, _ = slice_table(kaggle_folder)
    cache = build_cache(table, tmp_path / "cache", 16, progress=False)
    index = cache.index
    for _, rows in index.groupby("series_uid").groups.items():
        rows = np.asarray(rows)
        assert (np.diff(rows) == 1).all()
        assert index.loc[rows, "slice_index"].tolist() == list(range(len(rows)))
    start, length = cache.series_bounds()
    neighbours = cache.neighbour_rows(3)
    first = int(start[0])
    assert neighbours[first].tolist() == [first, first, first + 1]
    last = int(start[0] + length[0] - 1)
    assert neighbours[last].tolist() == [last - 1, last, last]


def test_cache_labels_and_splits_copied(kaggle_folder, tmp_path):
    table, _ = slice_table(kaggle_folder)
    cache = build_cache(table, tmp_path / "cache", 16, progress=False)
    expected = table.set_index("image_id").loc[cache.index["image_id"]]
    for column in (*LABEL_COLUMNS, "split", "patient_id"):
        assert cache.index[column].tolist() == expected[column].tolist(), column
    assert cache.labels.shape == (len(cache), 5)
    assert cache.labels.dtype == np.float32


def test_cache_reused_with_same_settings(kaggle_folder, tmp_path, caplog):
    table, _ = slice_table(kaggle_folder)
    build_cache(table, tmp_path / "cache", 16, progress=False)
    hu_inode = (tmp_path / "cache" / "hu.npy").stat().st_ino
    with caplog.at_level(logging.INFO, logger="ichlab.cache_build"):
        build_cache(table, tmp_path / "cache", 16, progress=False)
    assert "reusing the cache" in caplog.text
    assert (tmp_path / "cache" / "hu.npy").stat().st_ino == hu_inode


def test_cache_new_split_rewrites_index_only(kaggle_folder, tmp_path):
    table, _ = slice_table(kaggle_folder)
    first = build_cache(table, tmp_path / "cache", 16, progress=False)
    hu_inode = (tmp_path / "cache" / "hu.npy").stat().st_ino
    resplit, _ = slice_table(kaggle_folder, fractions=(0.34, 0.33, 0.33))
    assert not resplit["split"].equals(table["split"])
    second = build_cache(resplit, tmp_path / "cache", 16, progress=False)
    assert (tmp_path / "cache" / "hu.npy").stat().st_ino == hu_inode
    expected = resplit.set_index("image_id").loc[second.index["image_id"], "split"]
    assert second.index["split"].tolist() == expected.tolist()
    assert second.index["image_id"].tolist() == first.index["image_id"].tolist()


def test_cache_rebuilt_when_size_changes(kaggle_folder, tmp_path):
    table, _ = slice_table(kaggle_folder)
    build_cache(table, tmp_path / "cache", 16, progress=False)
    cache = build_cache(table, tmp_path / "cache", 12, progress=False)
    assert cache.hu.shape[1:] == (12, 12)
    assert not list(tmp_path.glob("cache.*"))  # no partial or stale folder left behind


def test_cache_resumes_after_keyboard_interrupt(kaggle_folder, tmp_path, caplog):
    table, _ = slice_table(kaggle_folder)
    reference = build_cache(table, tmp_path / "reference", 16, progress=False)

    def interrupt_after_two_chunks(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(table, tmp_path / "cache", 16, chunk_size=4, progress=False, on_chunk=interrupt_after_two_chunks)
    with pytest.raises(CacheError, match="unfinished build"):
        SliceCache.open(tmp_path / "cache")

    reports = []
    with caplog.at_level(logging.INFO, logger="ichlab.cache_build"):
        cache = build_cache(
            table, tmp_path / "cache", 16, chunk_size=4, progress=False, on_chunk=lambda done, total: reports.append(done)
        )
    assert "8 of 30 slices already done" in caplog.text
    assert reports == [12, 16, 20, 24, 28, 30]
    assert np.array_equal(cache.hu, reference.hu)
    assert cache.index.equals(reference.index)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX-only")
def test_cache_resumes_after_hard_kill(kaggle_folder, tmp_path):
    table, _ = slice_table(kaggle_folder)
    table.to_pickle(tmp_path / "table.pkl")
    script = f"""
import os, signal, pandas
from ichlab.cache import build_cache
def kill_after_three_chunks(done, total):
    if done >= 12:
        os.kill(os.getpid(), signal.SIGKILL)
build_cache(pandas.read_pickle({str(tmp_path / 'table.pkl')!r}), {str(tmp_path / 'cache')!r}, 16,
            chunk_size=4, progress=False, on_chunk=kill_after_three_chunks)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (tmp_path / "cache").exists()
    status = np.load(tmp_path / "cache.partial" / "status.npy")
    assert (status == 1).sum() == 12

    reports = []
    cache = build_cache(table, tmp_path / "cache", 16, chunk_size=4, progress=False, on_chunk=lambda done, total: reports.append(done))
    assert reports[0] == 16
    assert (cache.hu[:, 10, 4] == expected_block(cache.index)).all()


def test_cache_skips_file_that_fails_to_decode(tmp_path, caplog):
    root = write_kaggle_folder(tmp_path / "rsna", slices_per_patient=(5, 4, 6))
    table, skipped = slice_table(root)
    broken = table.loc[(table["patient_id"] == "PAT0") & (table["slice_index"] == 2), "file"].iloc[0]
    Path(broken).write_bytes(Path(broken).read_bytes()[:600])  # truncated after the header scan
    with caplog.at_level(logging.WARNING, logger="ichlab.cache_build"):
        cache = build_cache(table, tmp_path / "cache", 16, skipped=skipped, progress=False)
    assert len(cache) == 14
    assert cache.skipped["file"].tolist() == [broken]
    assert "PixelData" in cache.skipped["reason"].iloc[0] or "truncated" in cache.skipped["reason"].iloc[0]
    assert "1 of 15 files failed to decode" in caplog.text
    assert (cache.hu[:, 10, 4] == expected_block(cache.index)).all()
    patient0 = cache.index[cache.index["patient_id"] == "PAT0"]
    assert patient0["slice_index"].tolist() == [0, 1, 3, 4]


def test_cache_rejects_leaking_table(kaggle_folder, tmp_path):
    table, _ = slice_table(kaggle_folder)
    table.loc[0, "split"] = "test" if table.loc[0, "split"] != "test" else "train"
    with pytest.raises(ValueError, match="more than one split"):
        build_cache(table, tmp_path / "cache", 16, progress=False)


def test_slice_cache_pickles_as_path(kaggle_folder, tmp_path):
    table, _ = slice_table(kaggle_folder)
    cache = build_cache(table, tmp_path / "cache", 16, progress=False)
    payload = pickle.dumps(cache)
    assert len(payload) < 1000
    copy = pickle.loads(payload)
    assert np.array_equal(copy.hu, cache.hu)
    assert copy.index.equals(cache.index)


def test_open_missing_cache_names_folder(tmp_path):
    with pytest.raises(CacheError, match="no finished cache"):
        SliceCache.open(tmp_path / "nothing")


def rsna_config(root: Path, tmp_path: Path, n_patients: int):
    config = get_config("quick")
    data = replace(
        config.data, source="rsna", root=root, cache_dir=tmp_path / "cache", n_patients=n_patients, image_size=16
    )
    return replace(config, data=data)


def test_prepare_data_rsna_subset_and_reuse(kaggle_folder, tmp_path, caplog):
    config = rsna_config(kaggle_folder, tmp_path, n_patients=5)
    cache = prepare_data(config, progress=False)
    assert cache.index["patient_id"].nunique() == 5
    assert set(cache.index["split"]) <= {"train", "val", "test"}
    assert (cache.hu[:, 10, 4] == expected_block(cache.index)).all()
    assert not (tmp_path / "cache.scan.pkl").exists()

    with caplog.at_level(logging.INFO, logger="ichlab.data"):
        again = prepare_data(config, progress=False)
    assert "using the cache" in caplog.text
    assert again.index.equals(cache.index)

    bigger = prepare_data(rsna_config(kaggle_folder, tmp_path, n_patients=6), progress=False)
    assert bigger.index["patient_id"].nunique() == 6


def test_prepare_data_uses_copied_cache_without_data(kaggle_folder, tmp_path):
    built = prepare_data(rsna_config(kaggle_folder, tmp_path / "here", n_patients=5), progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(built.path, elsewhere / "cache")
    copied = prepare_data(rsna_config(tmp_path / "no-rsna-here", elsewhere, n_patients=5), progress=False)
    assert copied.path == elsewhere / "cache"
    assert copied.index.equals(built.index)


def test_prepare_data_missing_rsna_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no RSNA layout"):
        prepare_data(rsna_config(tmp_path / "absent", tmp_path, n_patients=5), progress=False)


def test_prepare_data_generated_with_masks(tmp_path):
    config = get_config("quick")
    data = replace(
        config.data,
        root=tmp_path / "generated",
        cache_dir=tmp_path / "cache",
        n_patients=3,
        slices_per_series=(6, 7),
        phantom_size=64,
        image_size=32,
    )
    cache = prepare_data(replace(config, data=data), progress=False)
    headers = scan_headers(data.root / "stage_2_train", progress=False, workers=1).headers
    pixel_spacing = dict(zip(headers["image_id"], headers["pixel_spacing"]))
    assert cache.index["patient_id"].nunique() == 3
    assert cache.index["has_mask"].all()
    assert cache.masks.shape == (len(cache), 5, 32, 32)
    assert cache.masks.dtype == np.uint8
    assert set(np.unique(cache.masks)) <= {0, 1}
    source = load_masks(data.root, cache.index["image_id"])
    for row, image_id in enumerate(cache.index["image_id"]):
        expected = to_square(source[image_id].astype(np.uint8), 32, pixel_spacing=pixel_spacing[image_id], interpolation="nearest")
        assert np.array_equal(cache.masks[row], expected), image_id

    labels = cache.index[list(SUBTYPES)].to_numpy()
    lesion_area = cache.masks.reshape(len(cache), 5, -1).sum(axis=2)  # (N, 5) pixels
    assert labels.sum() > 0
    # Most labelled slices keep their lesion at 32 px; a lesion of a few pixels can vanish when halved.
    assert (lesion_area[labels == 1] > 0).mean() > 0.8


@pytest.fixture(scope="module")
def finished_cache(kaggle_folder, tmp_path_factory) -> Path:
    table, skipped = slice_table(kaggle_folder)
    return build_cache(table, tmp_path_factory.mktemp("finished") / "cache", 16, skipped=skipped, progress=False).path


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


@pytest.mark.parametrize(
    ("file_name", "damage"),
    [
        ("hu.npy", lambda path: _truncate(path, 0)),
        ("hu.npy", lambda path: _truncate(path, 1000)),
        ("hu.npy", lambda path: path.unlink()),
        ("manifest.json", lambda path: path.write_text("{not json")),
        ("index.csv", lambda path: _truncate(path, 300)),
        ("index.csv", lambda path: path.unlink()),
    ],
)
def test_damaged_cache_names_file(finished_cache, tmp_path, file_name, damage):
    copy = tmp_path / "cache"
    shutil.copytree(finished_cache, copy)
    damage(copy / file_name)
    with pytest.raises(CacheError, match=rf"{file_name} is damaged or missing .*delete the folder .*ichlab prepare"):
        SliceCache.open(copy)


def test_build_replaces_damaged_cache(kaggle_folder, tmp_path, caplog):
    table, skipped = slice_table(kaggle_folder)
    first = build_cache(table, tmp_path / "cache", 16, skipped=skipped, progress=False)
    expected = np.array(first.hu)
    _truncate(first.path / "hu.npy", 0)

    with caplog.at_level(logging.WARNING, logger="ichlab.cache_build"):
        rebuilt = build_cache(table, tmp_path / "cache", 16, skipped=skipped, progress=False)
    assert "building the cache again" in caplog.text
    np.testing.assert_array_equal(rebuilt.hu, expected)


def test_overrides_get_their_own_folders(tmp_path):
    from ichlab.data import with_data_overrides

    config = get_config("quick")
    mode_root, mode_cache = Path(config.data.root), Path(config.data.cache_dir)

    same = with_data_overrides(config, seed=config.data.seed, image_size=None)
    assert (Path(same.data.root), Path(same.data.cache_dir)) == (mode_root, mode_cache)

    reseeded = with_data_overrides(config, seed=config.data.seed + 1)
    name = f"quick-p{config.data.n_patients}-seed{config.data.seed + 1}"
    assert Path(reseeded.data.root) == mode_root.with_name(name)
    assert Path(reseeded.data.cache_dir) == mode_cache.with_name(name)

    resized = with_data_overrides(config, image_size=64)
    assert Path(resized.data.root) == mode_root
    assert Path(resized.data.cache_dir) == mode_cache.with_name(f"{mode_cache.name}-64px")

    explicit = with_data_overrides(config, seed=config.data.seed + 1, cache_dir=tmp_path / "mine")
    assert Path(explicit.data.cache_dir) == tmp_path / "mine"

    rsna = with_data_overrides(config, source="rsna", root=tmp_path)
    assert Path(rsna.data.cache_dir).name.startswith("quick-rsna-")
    assert config.data.cache_dir == mode_cache  # the mode's config is left as it was
