"""The generated dataset folder: layout, labels against masks, determinism, reuse, splits, CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from ichlab import LABEL_COLUMNS, SUBTYPES
from ichlab.config import get_config
from ichlab.phantom import dataset as phantom_dataset
from ichlab.phantom import generate_dataset, load_masks
from ichlab.phantom.plan import PhantomSettings, plan_dataset
from ichlab.phantom.render import render_series, slice_labels

SMALL = dict(image_size=48, slices_per_series=(6, 8), progress=False)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """Six patients at 64 px, 20 to 22 slices, clean headers."""
    root = tmp_path_factory.mktemp("phantom") / "clean"
    return generate_dataset(root, 6, seed=11, image_size=64, slices_per_series=(20, 22), progress=False)


def _read_labels(root) -> pd.DataFrame:
    # (images, 6): one row per image id, one column per label, from the RSNA-style long format.
    raw = pd.read_csv(root / "stage_2_train.csv").drop_duplicates()
    parts = raw["ID"].str.rsplit("_", n=1, expand=True)
    raw["image_id"], raw["label"] = parts[0], parts[1]
    return raw.pivot(index="image_id", columns="label", values="Label")[list(LABEL_COLUMNS)]


def test_layout_matches_rsna(small_root):
    files = sorted((small_root / "stage_2_train").glob("*.dcm"))
    masks = sorted((small_root / "masks").glob("*.npz"))
    assert (small_root / "phantom.json").is_file()
    assert len(masks) == 6
    assert 6 * 20 <= len(files) <= 6 * 22
    assert all(len(path.stem) == len("ID_") + 9 and path.stem.startswith("ID_") for path in files)
    int(files[0].stem[3:], 16)  # the id after ID_ is hexadecimal


def test_label_csv_format(small_root):
    lines = (small_root / "stage_2_train.csv").read_text().splitlines()
    assert lines[0] == "ID,Label"
    first_image = lines[1].rsplit("_", 1)[0]
    assert [line.split(",")[0] for line in lines[1:7]] == [f"{first_image}_{column}" for column in LABEL_COLUMNS]
    assert {line.split(",")[1] for line in lines[1:]} <= {"0", "1"}
    labels = _read_labels(small_root)
    assert len(labels) == len(list((small_root / "stage_2_train").glob("*.dcm")))
    assert (labels["any"] == labels[list(SUBTYPES)].max(axis=1)).all()


def test_file_names_carry_no_order(small_root):
    # Sorting the names must not sort the slices of a series by height.
    correlations = []
    for mask_file in (small_root / "masks").glob("*.npz"):
        image_ids = np.load(mask_file)["image_ids"]  # slice order, bottom to top
        by_name = np.argsort(image_ids)
        correlations.append(abs(np.corrcoef(by_name, np.arange(len(image_ids)))[0, 1]))
    assert np.mean(correlations) < 0.6


def test_labels_match_mask_areas(small_root):
    labels = _read_labels(small_root)
    settings = json.loads((small_root / "phantom.json").read_text())["settings"]
    masks = load_masks(small_root, labels.index)
    for image_id, row in labels.iterrows():
        spacing = float(pydicom.dcmread(small_root / "stage_2_train" / f"{image_id}.dcm", stop_before_pixels=True).PixelSpacing[0])
        area_mm2 = masks[image_id].sum(axis=(1, 2)) * spacing**2  # (5,)
        expected = (area_mm2 >= settings["label_min_area_mm2"]).astype(int)
        assert row[list(SUBTYPES)].tolist() == expected.tolist(), image_id


def test_masks_file_contract(small_root):
    mask_file = next((small_root / "masks").glob("*.npz"))
    with np.load(mask_file, allow_pickle=False) as data:
        image_ids, masks = data["image_ids"], data["masks"]
    assert masks.dtype == np.uint8
    assert masks.shape == (len(image_ids), 5, 64, 64)
    ds = pydicom.dcmread(small_root / "stage_2_train" / f"{image_ids[0]}.dcm", stop_before_pixels=True)
    assert ds.SeriesInstanceUID == mask_file.stem
    assert (ds.Rows, ds.Columns) == masks.shape[2:]


def test_load_masks_returns_bool_per_image(small_root):
    image_ids = [path.stem for path in sorted((small_root / "stage_2_train").glob("*.dcm"))[:5]]
    masks = load_masks(small_root, image_ids)
    assert sorted(masks) == sorted(image_ids)
    assert all(mask.dtype == bool and mask.shape == (5, 64, 64) for mask in masks.values())


def test_load_masks_unknown_id(small_root):
    with pytest.raises(KeyError, match="ID_000000000"):
        load_masks(small_root, ["ID_000000000"])
    assert load_masks(small_root, ["ID_000000000"], strict=False) == {}


def test_load_masks_without_mask_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="masks"):
        load_masks(tmp_path, ["ID_000000000"])


def test_summary_counts_match_labels(small_root):
    summary = json.loads((small_root / "phantom.json").read_text())["summary"]
    labels = _read_labels(small_root)
    assert summary["n_images"] == len(labels)
    assert summary["positive_slices"] == {subtype: int(labels[subtype].sum()) for subtype in SUBTYPES}


def test_same_seed_gives_identical_files(tmp_path):
    first = generate_dataset(tmp_path / "a", 3, seed=4, **SMALL)
    second = generate_dataset(tmp_path / "b", 3, seed=4, **SMALL)
    names = sorted(path.name for path in (first / "stage_2_train").iterdir())
    assert names == sorted(path.name for path in (second / "stage_2_train").iterdir())
    for name in names:
        assert (first / "stage_2_train" / name).read_bytes() == (second / "stage_2_train" / name).read_bytes(), name
    assert (first / "stage_2_train.csv").read_bytes() == (second / "stage_2_train.csv").read_bytes()
    for mask_file in (first / "masks").iterdir():
        assert np.array_equal(np.load(mask_file)["masks"], np.load(second / "masks" / mask_file.name)["masks"])


def test_worker_processes_give_identical_files(tmp_path):
    serial = generate_dataset(tmp_path / "serial", 2, seed=6, **SMALL)
    parallel = generate_dataset(tmp_path / "parallel", 2, seed=6, workers=2, **SMALL)
    for path in sorted(serial.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (parallel / path.relative_to(serial)).read_bytes(), path.name


def test_other_seed_gives_other_pixels(tmp_path):
    first = generate_dataset(tmp_path / "a", 1, seed=1, **SMALL)
    second = generate_dataset(tmp_path / "b", 1, seed=2, **SMALL)
    pixels = [pydicom.dcmread(next((root / "stage_2_train").iterdir())).pixel_array for root in (first, second)]
    assert not np.array_equal(*pixels)


def test_complete_folder_is_reused(tmp_path):
    root = generate_dataset(tmp_path / "data", 2, seed=0, **SMALL)
    stamps = {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}
    assert generate_dataset(tmp_path / "data", 2, seed=0, **SMALL) == root
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()} == stamps


def test_folder_with_other_settings_is_rejected(tmp_path):
    generate_dataset(tmp_path / "data", 2, seed=0, **SMALL)
    with pytest.raises(FileExistsError, match="seed"):
        generate_dataset(tmp_path / "data", 2, seed=1, **SMALL)


def test_outdated_generator_version_is_regenerated(tmp_path):
    root = generate_dataset(tmp_path / "data", 1, seed=0, **SMALL)
    record = json.loads((root / "phantom.json").read_text())
    current_version = record["settings"]["generator_version"]
    record["settings"]["generator_version"] = current_version - 1
    record["settings"]["prevalence"]["epidural"] = 0.01  # an older default
    (root / "phantom.json").write_text(json.dumps(record))
    (root / "stale.txt").write_text("left by the old version")

    assert generate_dataset(tmp_path / "data", 1, seed=0, **SMALL) == root
    assert json.loads((root / "phantom.json").read_text())["settings"]["generator_version"] == current_version
    assert not (root / "stale.txt").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_foreign_folder_is_rejected(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="phantom.json"):
        generate_dataset(tmp_path / "data", 1, **SMALL)


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    real_render = phantom_dataset.render_series
    calls = []

    def render_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(phantom_dataset, "render_series", render_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "data", 3, **SMALL)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(phantom_dataset, "render_series", real_render)
    root = generate_dataset(tmp_path / "data", 3, **SMALL)
    assert len(list((root / "masks").iterdir())) == 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(n_patients=0), "n_patients"),
        (dict(difficulty="brutal"), "difficulty"),
        (dict(quirks=["bent_pixels"]), "bent_pixels"),
        (dict(quirks={"truncated_file": 2.0}), "truncated_file"),
        (dict(prevalence={"chronic": 0.5}), "chronic"),
        (dict(prevalence={"epidural": -0.1}), "epidural"),
        (dict(slices_per_series=(8, 6)), "slices_per_series"),
    ],
)
def test_invalid_settings_raise(tmp_path, arguments, message):
    settings = dict(out_dir=tmp_path / "data", n_patients=1, **SMALL)
    settings.update(arguments)
    with pytest.raises(ValueError, match=message):
        generate_dataset(**settings)


def test_minimum_positive_patients_per_subtype(tmp_path):
    root = generate_dataset(tmp_path / "data", 8, seed=2, min_positive_patients=3, prevalence={s: 0.0 for s in SUBTYPES}, **SMALL)
    positive_patients = json.loads((root / "phantom.json").read_text())["summary"]["positive_patients"]
    assert positive_patients == {subtype: 3 for subtype in SUBTYPES}


@pytest.mark.parametrize("mode", ["quick", "demo"])
def test_mode_dataset_splits_hold_every_subtype(mode):
    from ichlab.splits import split_patients

    data = get_config(mode).data
    # The mode's patients, slices and seed, rendered at 48 px to keep the test fast: a lesion
    # large enough to be labelled at all is labelled at any pixel size.
    settings = PhantomSettings(n_patients=data.n_patients, seed=data.seed, image_size=48, slices_per_series=data.slices_per_series)
    rows = []
    for plan in plan_dataset(settings).series:
        labels = slice_labels(render_series(plan).masks, plan.pixel_spacing, settings.label_min_area_mm2)  # (N, 5)
        rows.append([plan.patient_id, *labels.max(axis=0)])
    table = pd.DataFrame(rows, columns=["patient_id", *SUBTYPES])
    assert (table[list(SUBTYPES)].sum() >= settings.min_positive_patients).all()

    table["split"] = table["patient_id"].map(split_patients(table, data.split_fractions, seed=data.seed))
    for name, part in table.groupby("split"):
        assert (part[list(SUBTYPES)].sum() > 0).all(), f"{mode} split {name} lacks a subtype: {part[list(SUBTYPES)].sum().to_dict()}"


def test_cli_writes_dataset(tmp_path, capsys):
    from ichlab.commands import phantom as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["phantom", "--out", str(tmp_path / "cli"), "--patients", "2", "--seed", "3", "--size", "32", "--slices", "6", "7", "--quirks", "--no-progress"]
    )
    assert args.run(args) == 0
    record = json.loads((tmp_path / "cli" / "phantom.json").read_text())
    assert record["settings"]["image_size"] == 32
    assert record["settings"]["quirks"]
    assert "teaching phantom" in capsys.readouterr().out


def test_cli_rejects_unknown_quirk(tmp_path, capsys):
    from ichlab.commands import phantom as command

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["phantom", "--out", str(tmp_path / "cli"), "--patients", "1", "--quirks", "bent_pixels"])
    assert args.run(args) == 2
    assert "bent_pixels" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
