"""Tests for scoring CAM maps against lesion masks: hand-made maps, then real models on a small cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ichlab import LABEL_COLUMNS, SUBTYPES
from ichlab.cache import SliceCache
from ichlab.cam import cache_inputs, score_cams, scores_to_markdown
from ichlab.cam_scoring import (
    SCORE_COLUMNS,
    cam_scores_per_slice,
    centred_gaussian,
    dilate_mask,
    hottest_point,
    mass_in_mask,
    pointing_game_hit,
    score_maps,
    scored_rows,
    summarise_scores,
    tolerance_pixels,
)
from ichlab.models import build_model

SIZE = 64

# Lesion discs of the small cache: subtype -> (row, column, radius) in pixels. No slice of
# the test series shows intraventricular blood, so that subtype has nothing to score.
LESIONS = {
    "epidural": (32, 10, 4),
    "intraparenchymal": (20, 36, 5),
    "subarachnoid": (46, 30, 3),
    "subdural": (32, 52, 4),
}
TEST_SLICES = 6  # the test series; slices 1 to 3 hold the lesions
TRAIN_SLICES = 4  # a train series with one intraventricular lesion on slice 2


def disc(row: int, column: int, radius: int, size: int = SIZE) -> np.ndarray:
    rows, columns = np.ogrid[:size, :size]
    return (rows - row) ** 2 + (columns - column) ** 2 <= radius**2


def write_small_cache(folder: Path) -> SliceCache:
    """Write a finished cache folder by hand (manifest, hu.npy, masks.npy, index.csv) and open it."""
    folder.mkdir(parents=True, exist_ok=True)
    n = TEST_SLICES + TRAIN_SLICES
    hu = np.full((n, SIZE, SIZE), -1000, dtype=np.int16)  # (N, S, S): air
    head = disc(32, 32, 28)
    hu[:, head] = 1000  # skull
    hu[:, disc(32, 32, 25)] = 30  # brain
    masks = np.zeros((n, len(SUBTYPES), SIZE, SIZE), dtype=np.uint8)  # (N, 5, S, S)

    records = []
    for row in range(n):
        test = row < TEST_SLICES
        slice_index = row if test else row - TEST_SLICES
        labels = dict.fromkeys(SUBTYPES, 0)
        if test and 1 <= slice_index <= 3:
            for subtype, (r, c, radius) in LESIONS.items():
                masks[row, SUBTYPES.index(subtype)] = disc(r, c, radius)
                labels[subtype] = 1
        if not test and slice_index == 2:
            masks[row, SUBTYPES.index("intraventricular")] = disc(32, 32, 4)
            labels["intraventricular"] = 1
        for channel in range(len(SUBTYPES)):
            hu[row][masks[row, channel] == 1] = 70  # blood
        records.append(
            {
                "image_id": f"ID_{row:04x}",
                "patient_id": "ID_p1" if test else "ID_p2",
                "series_uid": "1.2.826.0.1.1" if test else "1.2.826.0.1.2",
                "slice_index": slice_index,
                "split": "test" if test else "train",
                **labels,
                "any": int(any(labels.values())),
                "has_mask": True,
            }
        )

    np.save(folder / "hu.npy", hu)
    np.save(folder / "masks.npy", masks)
    pd.DataFrame(records)[["image_id", "patient_id", "series_uid", "slice_index", "split", *LABEL_COLUMNS, "has_mask"]].to_csv(
        folder / "index.csv", index=False
    )
    pd.DataFrame(columns=["file", "reason"]).to_csv(folder / "skipped.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps({"version": 1, "image_size": SIZE, "n_slices": n, "request": {}}))
    return SliceCache.open(folder)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> SliceCache:
    return write_small_cache(tmp_path_factory.mktemp("cache"))


def square_mask(top: int, left: int, side: int, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


def peak_map(row: int, column: int, size: int = 32) -> np.ndarray:
    cam = np.zeros((size, size), dtype=np.float32)
    cam[row, column] = 1.0
    return cam


def test_pointing_game_inside_mask():
    assert pointing_game_hit(peak_map(10, 10), square_mask(8, 8, 5), tolerance_px=0)


def test_pointing_game_outside_tolerance():
    assert not pointing_game_hit(peak_map(20, 10), square_mask(8, 8, 5), tolerance_px=2)


def test_pointing_game_within_tolerance():
    # The mask's last row is 12, so row 14 is 2 px away.
    assert pointing_game_hit(peak_map(14, 10), square_mask(8, 8, 5), tolerance_px=2)
    assert not pointing_game_hit(peak_map(15, 10), square_mask(8, 8, 5), tolerance_px=2)


def test_dilate_mask_is_euclidean():
    grown = dilate_mask(square_mask(10, 10, 1), tolerance_px=2)
    assert grown.sum() == 13  # the lattice points within distance 2 of one pixel
    assert grown[12, 10]
    assert not grown[12, 12]


def test_hottest_point_of_tied_block_is_centroid():
    cam = np.zeros((32, 32), dtype=np.float32)
    cam[14:17, 20:23] = 1.0  # a 3 x 3 block of equal maxima
    assert hottest_point(cam) == (15, 21)


def test_mass_in_mask_arithmetic():
    cam = np.zeros((32, 32), dtype=np.float32)
    cam[0:4, 0:4] = 1.0  # 16 px of mass
    cam[20, 20] = 8.0  # 8 more, outside the mask
    mask = np.zeros((32, 32), dtype=bool)
    mask[0:2, 0:4] = True  # covers 8 of the 16
    assert mass_in_mask(cam, mask) == pytest.approx(8 / 24)


def test_mass_in_mask_of_zero_map():
    assert mass_in_mask(np.zeros((8, 8), np.float32), square_mask(0, 0, 2, size=8)) == 0.0


def test_centred_gaussian_peaks_in_centre():
    baseline = centred_gaussian(33, 33)
    assert baseline.shape == (33, 33)
    assert hottest_point(baseline) == (16, 16)
    assert baseline.max() == pytest.approx(1.0)
    assert baseline.min() > 0.0


def test_score_maps_on_known_slices():
    central = square_mask(12, 12, 8)  # rows and columns 12 to 19, around the centre
    corner = square_mask(0, 0, 4)
    maps = np.stack([peak_map(14, 14), peak_map(30, 30), peak_map(14, 14)])
    masks = np.stack([central, corner, corner])
    scores = score_maps(maps, masks, empty=np.array([False, False, True]), tolerance_px=1)

    assert scores["hit"].tolist() == [True, False, False]
    assert scores["mass_in_mask"].tolist() == [1.0, 0.0, 0.0]
    assert scores["empty"].tolist() == [False, False, True]
    assert scores["baseline_hit"].tolist() == [True, False, False]
    assert scores["mask_area_fraction"].tolist() == [64 / 1024, 16 / 1024, 16 / 1024]
    expected_baseline = centred_gaussian(32, 32)[central].sum() / centred_gaussian(32, 32).sum()
    assert scores["baseline_mass_in_mask"][0] == pytest.approx(expected_baseline)


def test_score_maps_default_tolerance():
    assert tolerance_pixels(224) == 15
    assert tolerance_pixels(128) == 9
    assert tolerance_pixels(8) == 1


def test_score_maps_rejects_empty_mask():
    with pytest.raises(ValueError, match="empty"):
        score_maps(peak_map(1, 1)[None], np.zeros((1, 32, 32), bool))


def test_score_maps_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        score_maps(peak_map(1, 1)[None], square_mask(0, 0, 2, size=16)[None])


def test_summarise_scores_means_and_counts():
    per_slice = pd.DataFrame(
        {
            "model": ["2d", "2d", "2d", "lstm"],
            "subtype": ["epidural", "epidural", "epidural", "epidural"],
            "empty": [False, False, True, False],
            "hit": [True, False, False, True],
            "mass_in_mask": [0.6, 0.2, 0.0, 0.5],
            "baseline_hit": [False, False, False, True],
            "baseline_mass_in_mask": [0.1, 0.1, 0.1, 0.1],
            "mask_area_fraction": [0.02, 0.02, 0.02, 0.02],
        }
    )
    summary = summarise_scores(per_slice).set_index("model")
    assert list(summarise_scores(per_slice).columns) == SCORE_COLUMNS
    assert summary.loc["2d", "n_slices"] == 3
    assert summary.loc["2d", "n_empty"] == 1
    assert summary.loc["2d", "pointing_game"] == pytest.approx(1 / 3)
    assert summary.loc["2d", "mass_in_mask"] == pytest.approx(0.8 / 3)
    assert summary.loc["lstm", "baseline_pointing_game"] == 1.0


def test_scored_rows_needs_label_and_mask(small_cache):
    assert scored_rows(small_cache, "test", "epidural").tolist() == [1, 2, 3]
    assert scored_rows(small_cache, "test", "intraventricular").tolist() == []
    assert scored_rows(small_cache, "train", "intraventricular").tolist() == [TEST_SLICES + 2]
    sample = scored_rows(small_cache, "test", "epidural", max_slices=2, seed=0)
    assert len(sample) == 2
    assert set(sample) <= {1, 2, 3}


def test_cache_inputs_shapes(small_cache):
    assert cache_inputs(small_cache, [0, 1], "2d").shape == (2, 3, SIZE, SIZE)
    assert cache_inputs(small_cache, [0, 1], "2.5d").shape == (2, 9, SIZE, SIZE)
    window = cache_inputs(small_cache, [0, 5], "lstm")  # (2, 3, 3, S, S)
    assert window.shape == (2, 3, 3, SIZE, SIZE)
    torch.testing.assert_close(window[0, 0], window[0, 1])  # the first slice repeats at the series start
    torch.testing.assert_close(window[1, 2], window[1, 1])  # and the last at its end
    assert window.min() >= 0.0
    assert window.max() <= 1.0


def test_score_cams_with_real_models(small_cache):
    torch.manual_seed(0)
    models = {
        "2d": build_model("2d").eval(),
        "2.5d": build_model("2.5d").eval(),
        "lstm": build_model("lstm", lstm_hidden=32).eval(),
    }
    per_slice = cam_scores_per_slice(models, small_cache, "test", max_slices_per_subtype=2, progress=False)
    assert len(per_slice) == 3 * 4 * 2  # models x subtypes with lesions x slices
    assert set(per_slice["row"]) <= {1, 2, 3}
    assert per_slice["mass_in_mask"].between(0, 1).all()

    scores = score_cams(models, small_cache, "test", max_slices_per_subtype=2, progress=False)
    assert list(scores.columns) == SCORE_COLUMNS
    assert len(scores) == 3 * 4
    assert set(scores["subtype"]) == set(LESIONS)
    assert (scores["n_slices"] == 2).all()
    for column in ("pointing_game", "baseline_pointing_game", "mass_in_mask", "baseline_mass_in_mask"):
        assert scores[column].between(0, 1).all()

    # The baseline ignores the image, so it scores the same for every model.
    baseline = scores.pivot(index="subtype", columns="model", values="baseline_mass_in_mask")
    np.testing.assert_allclose(baseline["2d"], baseline["lstm"])
    # The centred Gaussian peaks at the image centre, at least 7 px from every lesion disc,
    # beyond the 4 px tolerance at 64 px.
    assert (scores["baseline_pointing_game"] == 0).all()
    area = scores.set_index(["model", "subtype"])["mask_area_fraction"]
    assert area[("2d", "epidural")] == pytest.approx(disc(*LESIONS["epidural"]).mean())


def test_score_cams_without_masks_raises(small_cache, tmp_path):
    folder = tmp_path / "no_masks"
    write_small_cache(folder)
    (folder / "masks.npy").unlink()
    with pytest.raises(ValueError, match="no lesion masks"):
        score_cams({"2d": build_model("2d")}, SliceCache.open(folder), "test", progress=False)


def test_scores_to_markdown_lists_rows():
    scores = pd.DataFrame(
        [["lstm", "subdural", 4, 1, 0.75, 0.25, 0.5, 0.1, 0.02]], columns=SCORE_COLUMNS
    )
    text = scores_to_markdown(scores)
    assert "| lstm | subdural | 4 | 1 | 0.75 | 0.25 | 0.50 | 0.10 | 0.020 |" in text
    assert "centred Gaussian" in text
