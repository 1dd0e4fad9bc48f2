"""Tests for the Grad-CAM figures: overlays, the subtype figure and the explorer."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from test_cam_scoring import LESIONS, SIZE, write_small_cache

from ichlab import SUBTYPES
from ichlab.cam import (
    cam_explorer,
    compare_models_figure,
    overlay_cam,
    save_overlay,
    save_subtype_figure,
    subtype_figure,
    window_figure,
)
from ichlab.cam_explorer import explorer_figure, predict_rows
from ichlab.cam_figures import most_confident_true_positives
from ichlab.models import build_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    return write_small_cache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def lstm():
    torch.manual_seed(0)
    return build_model("lstm", lstm_hidden=32).eval()


def prediction_table(cache, probabilities: dict[str, list[float]]) -> pd.DataFrame:
    """A prediction table for the test split with the given probabilities per subtype."""
    index = cache.index[cache.index["split"] == "test"].reset_index(drop=True)
    table = index[["image_id", "patient_id", "series_uid", "slice_index"]].copy()
    for subtype in SUBTYPES:
        table[f"prob_{subtype}"] = probabilities.get(subtype, [0.1] * len(index))
    for subtype in SUBTYPES:
        table[subtype] = index[subtype]
    return table


def test_save_overlay_writes_png(tmp_path):
    hu = np.full((SIZE, SIZE), 40.0, dtype=np.float32)
    cam = np.zeros((SIZE, SIZE), dtype=np.float32)
    cam[10:20, 10:20] = 1.0
    path = save_overlay(hu, cam, tmp_path / "out" / "overlay.png", title="test overlay")
    image = plt.imread(path)
    assert image.ndim == 3
    assert image.shape[0] > 100


def test_overlay_marks_empty_map():
    figure, ax = plt.subplots()
    overlay_cam(ax, np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE)))
    assert any("empty map" in text.get_text() for text in ax.texts)
    assert ax.get_xlabel() == "column (px)"
    plt.close(figure)


def test_overlay_rejects_other_grid():
    figure, ax = plt.subplots()
    with pytest.raises(ValueError, match="differs from the slice"):
        overlay_cam(ax, np.zeros((SIZE, SIZE)), np.zeros((SIZE // 2, SIZE // 2)))
    plt.close(figure)


def test_most_confident_true_positive_per_subtype(small_cache):
    # Test slices 1 to 3 hold the lesions; slice 4 is negative but has the highest probability.
    probabilities = {
        "epidural": [0.1, 0.6, 0.9, 0.7, 0.95, 0.1],
        "subdural": [0.1, 0.3, 0.4, 0.2, 0.9, 0.1],  # no positive slice reaches 0.5
    }
    chosen = most_confident_true_positives(prediction_table(small_cache, probabilities), small_cache).set_index("subtype")
    assert chosen.loc["epidural", "row"] == 2
    assert chosen.loc["epidural", "probability"] == pytest.approx(0.9)
    assert chosen.loc["subdural", "row"] == -1
    assert pd.isna(chosen.loc["intraventricular", "image_id"])
    lower = most_confident_true_positives(prediction_table(small_cache, probabilities), small_cache, thresholds=dict.fromkeys(SUBTYPES, 0.35))
    assert lower.set_index("subtype").loc["subdural", "row"] == 2


def test_most_confident_true_positive_needs_columns(small_cache):
    with pytest.raises(ValueError, match="prob_epidural"):
        most_confident_true_positives(pd.DataFrame({"image_id": []}), small_cache)


def test_subtype_figure_saves_png(small_cache, lstm, tmp_path):
    probabilities = {subtype: [0.1, 0.6, 0.9, 0.7, 0.2, 0.1] for subtype in LESIONS}
    predictions = prediction_table(small_cache, probabilities)
    path = tmp_path / "gradcam_subtypes.png"
    figure = subtype_figure(small_cache, predictions, lstm, path=path)
    image = plt.imread(path)
    assert image.shape[1] > image.shape[0]  # one wide figure of two rows of five
    panels = figure.axes[: 2 * len(SUBTYPES)]
    assert len(panels) == 10
    missing = panels[SUBTYPES.index("intraventricular")]
    assert any("no true positive" in text.get_text() for text in missing.texts)
    assert "LSTM Grad-CAM: subdural" in panels[len(SUBTYPES) + SUBTYPES.index("subdural")].get_title()
    assert any(ax.get_ylabel() == "Grad-CAM (relative, 0 to 1)" for ax in figure.axes)
    plt.close(figure)


def test_save_subtype_figure_returns_path(small_cache, lstm, tmp_path):
    predictions = prediction_table(small_cache, {"epidural": [0.1, 0.6, 0.9, 0.7, 0.2, 0.1]})
    path = save_subtype_figure(lstm, small_cache, predictions, tmp_path / "figure.png", context_slices=3)
    assert path.is_file()


def test_compare_models_figure_has_panel_per_model(small_cache, lstm):
    two_d = build_model("2d").eval()
    figure = compare_models_figure(small_cache, {"2d": two_d, "lstm": lstm}, 2, "subdural")
    titles = [ax.get_title() for ax in figure.axes[:2]]
    assert titles[0].startswith("2D: p(subdural) = ")
    assert titles[1].startswith("LSTM: p(subdural) = ")
    plt.close(figure)


def test_window_figure_repeats_end_slice(small_cache, lstm):
    figure = window_figure(small_cache, lstm, 0, "epidural")
    titles = [ax.get_title() for ax in figure.axes[:3]]
    assert titles == ["slice -1 (index 0)", "centre slice (index 0)", "slice +1 (index 1)"]
    plt.close(figure)


def test_predict_rows_keeps_mode(small_cache, lstm):
    lstm.train()
    try:
        probabilities = predict_rows(lstm, small_cache, [1, 2])
        assert lstm.training
    finally:
        lstm.eval()
    assert probabilities.shape == (2, len(SUBTYPES))
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_explorer_figure_panels(small_cache, lstm):
    figure = explorer_figure(small_cache, lstm, 2, "epidural")
    slice_ax, cam_ax, bars_ax = figure.axes[:3]
    assert slice_ax.get_title() == "slice 2 (brain window)"
    assert cam_ax.get_title() == "LSTM Grad-CAM: epidural"
    assert bars_ax.get_xlabel() == "probability"
    assert [label.get_text() for label in bars_ax.get_yticklabels()][0] == "epidural (present)"
    plt.close(figure)


def test_explorer_widget_follows_controls(small_cache, lstm):
    two_d = build_model("2d").eval()
    explorer = cam_explorer(small_cache, {"lstm": lstm, "2d": two_d}, split="test")
    (series_picker, slice_picker), (subtype_picker, model_picker) = (box.children for box in explorer.children[:2])
    assert series_picker.options == ("1.2.826.0.1.1",)
    assert slice_picker.max == 5
    assert slice_picker.value == 2  # the middle positive slice
    subtype_picker.value = "subdural"
    model_picker.value = "2d"
    slice_picker.value = 0
    assert slice_picker.value == 0
    plt.close("all")


def test_explorer_needs_models(small_cache):
    with pytest.raises(ValueError, match="models is empty"):
        cam_explorer(small_cache, {})
