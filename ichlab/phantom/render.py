"""Render a planned series into HU slices, a tissue map and lesion masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ichlab import SUBTYPES
from ichlab.phantom import anatomy
from ichlab.phantom.lesions import DIFFICULTIES, SLICE_SPACING_MM, render_lesion
from ichlab.phantom.plan import SeriesPlan
from ichlab.phantom.quirks import HU_RANGE

OEDEMA_DROP_HU = 10.0  # oedema is this much darker than white matter


@dataclass
class RenderedSeries:
    """The pixels of one series, in slice order from the skull base up."""

    hu: np.ndarray  # (N, H, W) int16
    tissue: np.ndarray  # (N, H, W) uint8 tissue codes of ``anatomy`` before lesions
    masks: np.ndarray  # (N, 5, H, W) bool, subtype order as ``ichlab.SUBTYPES``


def slice_heights(plan: SeriesPlan) -> np.ndarray:
    """Return the (N,) slice centre heights above the skull base in mm."""
    return plan.first_slice_mm + np.arange(plan.n_slices) * SLICE_SPACING_MM


def _upsample_linear(coarse: np.ndarray, rows: int, columns: int, step: float) -> np.ndarray:
    # Separable linear interpolation from a coarse grid with ``step`` pixels per cell. Written
    # with gathers instead of matrix products, because multithreaded BLAS on a busy machine
    # made the products ten times slower.
    for axis, size in ((0, rows), (1, columns)):
        position = np.arange(size, dtype=np.float32) / step
        low = np.minimum(np.floor(position).astype(np.int64), coarse.shape[axis] - 2)
        weight = position - low
        shape = (-1, 1) if axis == 0 else (1, -1)
        below = np.take(coarse, low, axis=axis)
        above = np.take(coarse, low + 1, axis=axis)
        coarse = below + (above - below) * weight.reshape(shape)
    return coarse  # (rows, columns)


def _smooth_field(rng: np.random.Generator, rows: int, columns: int, pixel_spacing: float, scale_mm: float) -> np.ndarray:
    # Unit-variance noise correlated over about ``scale_mm``: a coarse random grid, smoothed
    # and interpolated to full size.
    step = max(1.0, scale_mm / pixel_spacing / 2)
    coarse = rng.standard_normal((int(rows / step) + 2, int(columns / step) + 2), dtype=np.float32)
    field = _upsample_linear(ndimage.gaussian_filter(coarse, 1.0), rows, columns, step)  # (H, W)
    return field / max(float(field.std()), 1e-6)


def render_series(plan: SeriesPlan, difficulty: str = "default") -> RenderedSeries:
    """Render every slice of ``plan``.

    Parameters
    ----------
    plan
        One patient's planned series.
    difficulty
        Key of ``lesions.DIFFICULTIES``; sets the scanner noise.

    Returns
    -------
    RenderedSeries
        HU rounded to integers and clipped to ``quirks.HU_RANGE``, so every pixel encoding
        stores them exactly.
    """
    noise_hu = DIFFICULTIES[difficulty].noise_hu
    rng = np.random.default_rng(plan.noise_seed)
    x, y = anatomy.pixel_grid(plan.rows, plan.columns, plan.pixel_spacing)
    shape = (plan.n_slices, plan.rows, plan.columns)
    hu_volume = np.empty(shape, dtype=np.int16)  # (N, H, W)
    tissue_volume = np.full(shape, anatomy.AIR, dtype=np.uint8)  # (N, H, W)
    masks = np.zeros((plan.n_slices, len(SUBTYPES), plan.rows, plan.columns), dtype=bool)  # (N, 5, H, W)
    head = plan.head

    for slice_index, z_mm in enumerate(slice_heights(plan)):
        # Only the box around the head needs anatomy; everything outside it is air.
        box = _head_box(plan, float(z_mm), x[0], y[:, 0])
        fields = anatomy.slice_fields(head, float(z_mm), x[box], y[box])
        head_hu = anatomy.tissue_hu(head, fields.tissue)  # (h, w) inside the box
        bone = fields.tissue == anatomy.BONE
        head_hu[bone] = anatomy.bone_hu(head, fields)[bone]

        texture = _smooth_field(rng, *fields.tissue.shape, plan.pixel_spacing, scale_mm=6.0)
        brain = fields.depth >= 0
        head_hu[brain] += 1.2 * texture[brain]

        for lesion in plan.lesions:
            blood, oedema = render_lesion(lesion, head, fields)
            if oedema is not None:
                head_hu[oedema] = head.white_hu - OEDEMA_DROP_HU + texture[oedema]
            head_hu[blood] = lesion.blood_hu + 2.5 * texture[blood]
            masks[slice_index, SUBTYPES.index(lesion.subtype)][box] |= blood

        hu = np.full((plan.rows, plan.columns), anatomy.AIR_HU, dtype=np.float32)  # (H, W)
        hu[box] = head_hu
        # Scanner noise: white noise slightly correlated between neighbouring pixels.
        noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), 0.6)
        hu += noise * (noise_hu / max(float(noise.std()), 1e-6))

        hu_volume[slice_index] = np.clip(np.rint(hu), *HU_RANGE).astype(np.int16)
        tissue_volume[slice_index][box] = fields.tissue

    return RenderedSeries(hu=hu_volume, tissue=tissue_volume, masks=masks)


def _head_box(plan: SeriesPlan, z_mm: float, x: np.ndarray, y: np.ndarray) -> tuple[slice, slice]:
    # Row and column slices of the pixels within the head's largest radius (plus a margin) of its centre.
    head = plan.head
    scale = anatomy.size_factor(z_mm / head.height_mm)
    reach = max(head.half_width, head.half_length) * scale + 2 * plan.pixel_spacing + 1.0
    rows = np.flatnonzero(np.abs(y - head.center[1]) <= reach)
    columns = np.flatnonzero(np.abs(x - head.center[0]) <= reach)
    if rows.size == 0 or columns.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def slice_labels(masks: np.ndarray, pixel_spacing: float, min_area_mm2: float) -> np.ndarray:
    """Return (N, 5) int labels: 1 where a subtype's mask covers at least ``min_area_mm2`` on a slice.

    Parameters
    ----------
    masks
        (N, 5, H, W) bool lesion masks.
    pixel_spacing
        Pixel side in mm.
    min_area_mm2
        Smallest cross-section that counts as a visible lesion.
    """
    area_mm2 = masks.sum(axis=(2, 3)) * pixel_spacing**2  # (N, 5)
    return (area_mm2 >= min_area_mm2).astype(np.int64)
