"""Tables and figures that show what a generated dataset contains (used by notebook 02).

Slices are read back from the DICOM files with ``ichlab.dicom.load_hu`` and masks with
``load_masks``, so what is shown is what every later step reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ichlab import SUBTYPES
from ichlab.phantom import anatomy
from ichlab.phantom.dataset import IMAGE_FOLDER, MASK_FOLDER, read_settings
from ichlab.phantom.plan import PhantomSettings, SeriesPlan, plan_dataset
from ichlab.phantom.render import RenderedSeries, render_series

BRAIN_WINDOW = (40.0, 80.0)  # center, width in HU
MASK_COLOURS = ((0.9, 0.2, 0.2), (0.2, 0.8, 0.2), (0.2, 0.4, 1.0), (1.0, 0.8, 0.1), (0.8, 0.3, 0.9))


def series_masks(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return series uid -> (image_ids (N,), masks (N, 5, H, W) bool), slices from the skull base up."""
    result = {}
    for path in sorted((Path(root) / MASK_FOLDER).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            result[path.stem] = (data["image_ids"].astype(str), data["masks"].astype(bool))
    return result


def rerender(root: str | Path, series_index: int) -> tuple[SeriesPlan, RenderedSeries]:
    """Render one series of a dataset again from its ``phantom.json`` settings (with its tissue map)."""
    stored = read_settings(root)["settings"]
    settings = PhantomSettings(**dict(stored, slices_per_series=tuple(stored["slices_per_series"])))
    plan = plan_dataset(settings).series[series_index]
    return plan, render_series(plan, settings.difficulty)


def tissue_hu_table(plan: SeriesPlan, rendered: RenderedSeries) -> pd.DataFrame:
    """Return HU statistics per tissue (pixels outside lesions), one row per tissue present."""
    lesion = rendered.masks.any(axis=1)  # (N, H, W)
    rows = []
    for code, name in enumerate(anatomy.TISSUE_NAMES):
        values = rendered.hu[(rendered.tissue == code) & ~lesion].astype(np.float64)
        if values.size:
            rows.append((name, values.size, values.mean(), np.percentile(values, 5), np.percentile(values, 95)))
    table = pd.DataFrame(rows, columns=["tissue", "pixels", "mean HU", "5th pct HU", "95th pct HU"]).set_index("tissue")
    return table.round(0).astype(int)


def example_slices(root: str | Path) -> pd.DataFrame:
    """Return, per subtype, the slice where that subtype's lesion is largest.

    Columns: ``subtype``, ``series_uid``, ``image_id``, ``slice_index``, ``lesion_pixels``.
    """
    best: dict[str, tuple] = {}
    for series_uid, (image_ids, masks) in series_masks(root).items():
        area = masks.sum(axis=(2, 3))  # (N, 5) pixels per slice and subtype
        for column, subtype in enumerate(SUBTYPES):
            slice_index = int(area[:, column].argmax())
            pixels = int(area[slice_index, column])
            if pixels and (subtype not in best or pixels > best[subtype][-1]):
                best[subtype] = (subtype, series_uid, str(image_ids[slice_index]), slice_index, pixels)
    columns = ["subtype", "series_uid", "image_id", "slice_index", "lesion_pixels"]
    return pd.DataFrame([best[subtype] for subtype in SUBTYPES if subtype in best], columns=columns)


def lesion_brightness(root: str | Path) -> pd.DataFrame:
    """Return the HU of lesion pixels per subtype, read back from the DICOM files."""
    from ichlab.dicom import load_hu

    values: dict[str, list[np.ndarray]] = {subtype: [] for subtype in SUBTYPES}
    for image_ids, masks in series_masks(root).values():
        for image_id, mask in zip(image_ids, masks):
            if not mask.any():
                continue
            hu = load_hu(Path(root) / IMAGE_FOLDER / f"{image_id}.dcm")
            for column, subtype in enumerate(SUBTYPES):
                values[subtype].append(hu[mask[column]].astype(np.float64))
    rows = []
    for subtype in SUBTYPES:
        pixels = np.concatenate(values[subtype]) if values[subtype] else np.zeros(0)
        rows.append((subtype, pixels.size, pixels.mean(), np.percentile(pixels, 5), np.percentile(pixels, 95)))
    table = pd.DataFrame(rows, columns=["subtype", "pixels", "mean HU", "5th pct HU", "95th pct HU"]).set_index("subtype")
    return table.round(1)


def _brain_window(hu: np.ndarray) -> np.ndarray:
    center, width = BRAIN_WINDOW
    return np.clip((hu - (center - width / 2)) / width, 0, 1)


def _extent_mm(shape: tuple[int, int], pixel_spacing: float) -> tuple[float, float, float, float]:
    rows, columns = shape
    return (0.0, columns * pixel_spacing, rows * pixel_spacing, 0.0)


def show_series(root: str | Path, series_uid: str | None = None, n_slices: int = 6):
    """Plot ``n_slices`` slices of one series from the skull base to the vertex, in the brain window."""
    import matplotlib.pyplot as plt
    import pydicom

    from ichlab.dicom import load_hu

    all_masks = series_masks(root)
    series_uid = series_uid or next(iter(all_masks))
    image_ids, _ = all_masks[series_uid]
    picks = np.linspace(0, len(image_ids) - 1, n_slices).round().astype(int)
    figure, axes = plt.subplots(1, n_slices, figsize=(2.6 * n_slices, 3.0), dpi=60)
    for axis, slice_index in zip(np.atleast_1d(axes), picks):
        path = Path(root) / IMAGE_FOLDER / f"{image_ids[slice_index]}.dcm"
        spacing = float(pydicom.dcmread(path, stop_before_pixels=True).PixelSpacing[0])
        hu = load_hu(path)
        axis.imshow(_brain_window(hu), cmap="gray", extent=_extent_mm(hu.shape, spacing))
        axis.set_title(f"slice {slice_index} of {len(image_ids)}")
        axis.set_xlabel("x (mm)")
    np.atleast_1d(axes)[0].set_ylabel("y (mm)")
    figure.suptitle("One generated series, brain window 40/80 HU, skull base (left) to vertex (right)")
    figure.tight_layout()
    return figure


def show_subtypes(root: str | Path):
    """Plot one example slice per subtype in the brain window (top) and its lesion mask (bottom)."""
    import matplotlib.pyplot as plt
    import pydicom

    from ichlab.dicom import load_hu

    examples = example_slices(root)
    all_masks = series_masks(root)
    figure, axes = plt.subplots(2, len(examples), figsize=(2.8 * len(examples), 5.8), squeeze=False, dpi=60)
    for position, example in enumerate(examples.itertuples()):
        path = Path(root) / IMAGE_FOLDER / f"{example.image_id}.dcm"
        spacing = float(pydicom.dcmread(path, stop_before_pixels=True).PixelSpacing[0])
        hu = load_hu(path)
        mask = all_masks[example.series_uid][1][example.slice_index]  # (5, H, W)
        column = SUBTYPES.index(example.subtype)
        extent = _extent_mm(hu.shape, spacing)

        axes[0, position].imshow(_brain_window(hu), cmap="gray", extent=extent)
        axes[0, position].set_title(example.subtype)
        overlay = np.zeros(hu.shape + (4,), dtype=np.float32)  # (H, W, RGBA)
        overlay[mask[column]] = (*MASK_COLOURS[column], 1.0)
        axes[1, position].imshow(_brain_window(hu), cmap="gray", extent=extent, alpha=0.5)
        axes[1, position].imshow(overlay, extent=extent)
        axes[1, position].set_title(f"{example.subtype} mask")
        for axis in axes[:, position]:
            axis.set_xlabel("x (mm)")
    axes[0, 0].set_ylabel("y (mm)")
    axes[1, 0].set_ylabel("y (mm)")
    figure.suptitle("Each subtype's largest cross-section: brain window 40/80 HU (top), true mask (bottom)")
    figure.tight_layout()
    return figure


def lesion_profile(root: str | Path, series_uid: str) -> pd.DataFrame:
    """Return lesion area per slice (mm²) of one series beside the slice labels, one row per slice."""
    import pydicom

    from ichlab.phantom.dataset import LABEL_FILE

    image_ids, masks = series_masks(root)[series_uid]
    spacing = float(pydicom.dcmread(Path(root) / IMAGE_FOLDER / f"{image_ids[0]}.dcm", stop_before_pixels=True).PixelSpacing[0])
    labels = pd.read_csv(Path(root) / LABEL_FILE).drop_duplicates()
    labels = labels.set_index("ID")["Label"]
    rows = []
    for slice_index, (image_id, mask) in enumerate(zip(image_ids, masks)):
        area = mask.sum(axis=(1, 2)) * spacing**2
        row = {"slice_index": slice_index}
        for column, subtype in enumerate(SUBTYPES):
            row[f"{subtype} mm²"] = round(float(area[column]))
            row[f"{subtype} label"] = int(labels[f"{image_id}_{subtype}"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("slice_index")
