"""Figures for Grad-CAM: overlays on the brain window, the subtype figure and an explorer.

An overlay shows the slice in the brain window (40/80 HU) in grey with the CAM in colour
on top and a colour bar. An empty map is not drawn, and a note marks the panel instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
import pandas as pd

from ichlab import SUBTYPES
from ichlab.windows import WINDOWS, apply_window

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torch import nn

logger = logging.getLogger(__name__)

CAM_COLORMAP = "jet"
CAM_ALPHA = 0.45
COLORBAR_LABEL = "Grad-CAM (relative, 0 to 1)"


def add_cam_colorbar(figure: Figure, *, ax: Axes | None = None, cax: Axes | None = None) -> None:
    """Add the CAM colour bar (opaque, 0 to 1) beside ``ax`` or into ``cax``."""
    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=CAM_COLORMAP)
    if cax is not None:
        figure.colorbar(mappable, cax=cax, label=COLORBAR_LABEL)
    else:
        figure.colorbar(mappable, ax=ax, label=COLORBAR_LABEL, fraction=0.046, pad=0.04)


def arch_title(model: nn.Module) -> str:
    """Return the display name of a model's path: 2D, 2.5D or LSTM."""
    from ichlab.pipeline import ARCH_TITLES

    arch = getattr(model, "arch", "model")
    return ARCH_TITLES.get(arch, arch)


def overlay_cam(ax: Axes, hu: np.ndarray, cam: np.ndarray | None, *, empty: bool | None = None, title: str | None = None):
    """Draw a slice in the brain window with a CAM on top.

    Parameters
    ----------
    ax
        The axes to draw on.
    hu
        (H, W) slice in HU.
    cam
        (H, W) map in [0, 1] on the slice's pixel grid, or None to draw the slice alone.
    empty
        Whether the map is empty; default: True when ``cam`` is all zero. An empty map is
        not drawn, and a note marks the panel instead.
    """
    brain = apply_window(np.asarray(hu, dtype=np.float32), *WINDOWS["brain"])  # (H, W) in [0, 1]
    ax.imshow(brain, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    if title is not None:
        ax.set_title(title, fontsize=9)
    if cam is None:
        return

    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != brain.shape:
        raise ValueError(f"CAM shape {cam.shape} differs from the slice's {brain.shape}; compute the CAM on this slice's grid")
    if empty is None:
        empty = not cam.any()
    if empty:
        ax.text(
            0.5, 0.5, "empty map:\nno positive evidence", transform=ax.transAxes, ha="center", va="center",
            fontsize=8, color="white", bbox={"facecolor": "black", "alpha": 0.7, "edgecolor": "none"},
        )
        return
    ax.imshow(cam, cmap=CAM_COLORMAP, alpha=CAM_ALPHA, vmin=0.0, vmax=1.0)


def save_overlay(hu: np.ndarray, cam: np.ndarray, path: str | Path, *, title: str, empty: bool | None = None, dpi: int = 80) -> Path:
    """Save one slice with its CAM overlay and a colour bar as a PNG; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, ax = plt.subplots(figsize=(5, 4.6))
    overlay_cam(ax, hu, cam, empty=empty, title=title)
    add_cam_colorbar(figure, ax=ax)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def most_confident_true_positives(predictions: pd.DataFrame, cache, *, split: str = "test", thresholds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Pick, per subtype, the slice of ``split`` labelled positive with the highest probability above threshold.

    Parameters
    ----------
    predictions
        The prediction table: ``image_id``, ``prob_<subtype>`` and the subtype label columns.
    cache
        The ``SliceCache`` the predictions came from.
    thresholds
        Subtype to decision threshold; default 0.5 for each.

    Returns
    -------
    pandas.DataFrame
        One row per subtype: ``subtype``, ``image_id``, ``row`` (cache row, -1 if none),
        ``probability`` and ``threshold``; ``image_id`` and ``probability`` are NA where no true positive exists.
    """
    missing = [column for column in ["image_id", *SUBTYPES, *(f"prob_{s}" for s in SUBTYPES)] if column not in predictions.columns]
    if missing:
        raise ValueError(f"the prediction table lacks column(s) {', '.join(missing)}; pass a table from ichlab.pipeline.predict_split")
    row_of = pd.Series(np.arange(len(cache.index)), index=cache.index["image_id"].to_numpy())
    in_split = set(cache.index.loc[cache.index["split"] == split, "image_id"])
    table = predictions[predictions["image_id"].isin(in_split)]

    chosen = []
    for subtype in SUBTYPES:
        threshold = 0.5 if thresholds is None else float(thresholds[subtype])
        positives = table[(table[subtype] == 1) & (table[f"prob_{subtype}"] >= threshold)]
        if positives.empty:
            chosen.append({"subtype": subtype, "image_id": None, "row": -1, "probability": np.nan, "threshold": threshold})
            continue
        best = positives.loc[positives[f"prob_{subtype}"].idxmax()]
        chosen.append(
            {
                "subtype": subtype,
                "image_id": best["image_id"],
                "row": int(row_of[best["image_id"]]),
                "probability": float(best[f"prob_{subtype}"]),
                "threshold": threshold,
            }
        )
    return pd.DataFrame(chosen)


def subtype_figure(
    cache,
    predictions: pd.DataFrame,
    model: nn.Module,
    *,
    context_slices: int = 3,
    split: str = "test",
    thresholds: Mapping[str, float] | None = None,
    path: str | Path | None = None,
    dpi: int = 80,
) -> Figure:
    """Draw one slice per subtype (top row) and the model's Grad-CAM for that subtype (bottom row).

    Each column shows the most confident true positive of its subtype in ``split``
    (:func:`most_confident_true_positives`), or a panel saying there is none.

    Parameters
    ----------
    cache
        The ``SliceCache`` with the slices.
    predictions
        The model's prediction table for ``split``.
    model
        The model to explain, usually the LSTM path; its ``arch`` selects the input.
    context_slices
        K of the 2.5D or LSTM window.
    path
        Where to save the figure as PNG, if given.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from ichlab.cam import cache_inputs, compute_cams

    chosen = most_confident_true_positives(predictions, cache, split=split, thresholds=thresholds)
    found = chosen[chosen["row"] >= 0]
    arch = getattr(model, "arch", "lstm")
    title = arch_title(model)
    maps = {}
    if not found.empty:
        rows = found["row"].to_numpy()
        result = compute_cams(model, cache_inputs(cache, rows, arch, context_slices), found["subtype"].tolist())
        maps = {subtype: (result.maps[i], result.empty[i]) for i, subtype in enumerate(found["subtype"])}

    figure, axes = plt.subplots(2, len(SUBTYPES), figsize=(2.5 * len(SUBTYPES), 5.5), squeeze=False)
    for column, record in enumerate(chosen.to_dict("records")):
        top, bottom = axes[0, column], axes[1, column]
        subtype = record["subtype"]
        if record["row"] < 0:
            for ax in (top, bottom):
                ax.text(0.5, 0.5, f"no true positive\nfor {subtype}\nin the {split} split", ha="center", va="center", transform=ax.transAxes, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
            top.set_title(subtype, fontsize=10)
            continue
        hu = np.asarray(cache.hu[record["row"]], dtype=np.float32)  # (S, S)
        overlay_cam(top, hu, None, title=f"{subtype}, p = {record['probability']:.2f}")
        cam, empty = maps[subtype]
        overlay_cam(bottom, hu, cam, empty=bool(empty), title=f"{title} Grad-CAM: {subtype}")
    for ax in axes[0]:
        ax.set_xlabel("")

    figure.suptitle(f"Most confident true positive of each subtype ({split} split, brain window) and the {title} model's Grad-CAM")
    figure.tight_layout(rect=(0, 0, 0.93, 0.96))
    add_cam_colorbar(figure, cax=figure.add_axes((0.94, 0.08, 0.012, 0.36)))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi)
        logger.info("saved the subtype figure to %s", path)
    return figure


def save_subtype_figure(model: nn.Module, cache, predictions: pd.DataFrame, path: str | Path, *, context_slices: int = 3, **options) -> Path:
    """Save :func:`subtype_figure` as a PNG at ``path`` and close it; return the path."""
    figure = subtype_figure(cache, predictions, model, context_slices=context_slices, path=path, **options)
    plt.close(figure)
    return Path(path)


def compare_models_figure(cache, models: Mapping[str, nn.Module], row: int, subtype: str, *, context_slices: int = 3) -> Figure:
    """Draw one cache row's CAM for ``subtype`` from each model side by side, probability in each title."""
    from ichlab.cam import cache_inputs, compute_cams
    from ichlab.cam_explorer import predict_rows

    hu = np.asarray(cache.hu[row], dtype=np.float32)  # (S, S)
    figure, axes = plt.subplots(1, len(models), figsize=(3.3 * len(models), 3.6), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items()):
        arch = getattr(model, "arch", name)
        result = compute_cams(model, cache_inputs(cache, [row], arch, context_slices), [subtype])
        probability = predict_rows(model, cache, [row], context_slices=context_slices)[0, SUBTYPES.index(subtype)]
        overlay_cam(ax, hu, result.maps[0], empty=bool(result.empty[0]), title=f"{arch_title(model)}: p({subtype}) = {probability:.2f}")
    for ax in axes[0, 1:]:
        ax.set_ylabel("")
    record = cache.index.iloc[row]
    figure.suptitle(f"Grad-CAM for {subtype} from each path, image {record['image_id']}")
    figure.tight_layout(rect=(0, 0, 0.92, 0.95))
    add_cam_colorbar(figure, cax=figure.add_axes((0.93, 0.15, 0.012, 0.65)))
    return figure


def window_figure(cache, model: nn.Module, row: int, subtype: str, *, context_slices: int = 3) -> Figure:
    """Draw each slice of a cache row's window with the sequence model's CAM through that slice."""
    from ichlab.cam import cache_inputs, compute_window_cams

    window = cache_inputs(cache, [row], "lstm", context_slices)  # (1, K, 3, S, S)
    result = compute_window_cams(model, window, [subtype])
    series_start, _ = cache.series_bounds()
    neighbours = cache.neighbour_rows(context_slices)[row]  # (K,) cache rows, ends repeated
    figure, axes = plt.subplots(1, context_slices, figsize=(3.3 * context_slices, 3.6), squeeze=False)
    for position, ax in enumerate(axes[0]):
        hu = np.asarray(cache.hu[neighbours[position]], dtype=np.float32)  # (S, S)
        offset = position - context_slices // 2
        label = "centre slice" if offset == 0 else f"slice {offset:+d}"
        overlay_cam(ax, hu, result.maps[0, position], empty=bool(result.empty[0, position]), title=f"{label} (index {int(neighbours[position] - series_start[row])})")
    for ax in axes[0, 1:]:
        ax.set_ylabel("")
    figure.suptitle(f"{arch_title(model)} Grad-CAM for {subtype} through each slice of the window; labels belong to the centre slice")
    figure.tight_layout(rect=(0, 0, 0.92, 0.95))
    add_cam_colorbar(figure, cax=figure.add_axes((0.93, 0.15, 0.012, 0.65)))
    return figure
