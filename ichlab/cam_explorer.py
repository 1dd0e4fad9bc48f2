"""An ipywidgets explorer of Grad-CAM: pick series, slice, subtype and model; see the slice, CAM and probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch

from ichlab import SUBTYPES
from ichlab.cam_figures import add_cam_colorbar, arch_title, overlay_cam

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import nn


def predict_rows(model: nn.Module, cache, rows, *, context_slices: int = 3) -> np.ndarray:
    """Return (B, 5) subtype probabilities for cache rows, in eval mode without gradients."""
    from ichlab.cam import cache_inputs

    device = next(model.parameters()).device
    inputs = cache_inputs(cache, rows, getattr(model, "arch", "2d"), context_slices).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward = getattr(model, "forward_window", model)
            probabilities = torch.sigmoid(forward(inputs)).cpu().numpy()  # (B, 5)
    finally:
        model.train(was_training)
    return probabilities


def explorer_figure(cache, model: nn.Module, row: int, subtype: str, *, context_slices: int = 3, model_name: str | None = None) -> Figure:
    """Draw the explorer's view of one cache row: the slice, its CAM for ``subtype``, the probabilities."""
    from ichlab.cam import cache_inputs, compute_cams

    arch = getattr(model, "arch", "2d")
    model_name = model_name or arch_title(model)
    record = cache.index.iloc[row]
    hu = np.asarray(cache.hu[row], dtype=np.float32)  # (S, S)
    result = compute_cams(model, cache_inputs(cache, [row], arch, context_slices), [subtype])
    probabilities = predict_rows(model, cache, [row], context_slices=context_slices)[0]

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1, 1.15, 1]})
    overlay_cam(left, hu, None, title=f"slice {record['slice_index']} (brain window)")
    overlay_cam(middle, hu, result.maps[0], empty=bool(result.empty[0]), title=f"{model_name} Grad-CAM: {subtype}")
    add_cam_colorbar(figure, ax=middle)

    labels = [int(record[name]) for name in SUBTYPES]
    colours = ["tab:red" if label else "tab:grey" for label in labels]
    right.barh(range(len(SUBTYPES)), probabilities, color=colours)
    right.set_yticks(range(len(SUBTYPES)), [f"{name} ({'present' if label else 'absent'})" for name, label in zip(SUBTYPES, labels)])
    right.invert_yaxis()
    right.set_xlim(0, 1)
    right.axvline(0.5, color="black", linewidth=0.8, linestyle="--", label="0.5")
    right.legend(loc="lower right", fontsize=8, title="threshold", title_fontsize=8)
    right.set_xlabel("probability")
    right.set_title(f"{model_name} probabilities (red: labelled present)", fontsize=9)
    figure.suptitle(f"series {record['series_uid']}, image {record['image_id']}", fontsize=10)
    figure.tight_layout()
    return figure


def cam_explorer(cache, models: Mapping[str, nn.Module], *, context_slices: int = 3, split: str = "test"):
    """Build an ipywidgets explorer: pick series, slice, subtype and model; see the slice, CAM and probabilities.

    Returns
    -------
    ipywidgets.VBox
        The controls above an output area that redraws :func:`explorer_figure` on every change.
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not models:
        raise ValueError("models is empty; pass a mapping such as {'lstm': model}")
    index = cache.index
    in_split = index[index["split"] == split]
    if in_split.empty:
        raise ValueError(f"the cache has no slice in the {split!r} split")
    series_uids = list(dict.fromkeys(in_split["series_uid"]))

    series_picker = widgets.Dropdown(options=series_uids, description="series")
    slice_picker = widgets.IntSlider(min=0, max=0, value=0, description="slice")
    subtype_picker = widgets.Dropdown(options=list(SUBTYPES), description="subtype")
    model_picker = widgets.Dropdown(options=list(models), description="model")
    output = widgets.Output()

    def series_rows() -> np.ndarray:
        return np.flatnonzero(index["series_uid"].to_numpy() == series_picker.value)

    # True while a series change moves the slider, so that it redraws once, not per step.
    switching_series = False

    def redraw(_change=None) -> None:
        if switching_series:
            return
        rows = series_rows()
        row = int(rows[min(slice_picker.value, len(rows) - 1)])
        with output:
            output.clear_output(wait=True)
            figure = explorer_figure(
                cache, models[model_picker.value], row, subtype_picker.value, context_slices=context_slices, model_name=model_picker.value
            )
            display(figure)
            plt.close(figure)

    def on_series(_change=None) -> None:
        nonlocal switching_series
        rows = series_rows()
        positives = np.flatnonzero(index["any"].to_numpy()[rows] == 1)
        switching_series = True
        try:
            slice_picker.max = len(rows) - 1
            slice_picker.value = int(positives[len(positives) // 2]) if len(positives) else len(rows) // 2
        finally:
            switching_series = False
        redraw()

    series_picker.observe(on_series, names="value")
    for picker in (slice_picker, subtype_picker, model_picker):
        picker.observe(redraw, names="value")
    on_series()
    return widgets.VBox([widgets.HBox([series_picker, slice_picker]), widgets.HBox([subtype_picker, model_picker]), output])
