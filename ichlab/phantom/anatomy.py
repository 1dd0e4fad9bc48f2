"""Head anatomy of the phantom: tissue layers, sulci and ventricles that change with slice height.

A head is an ellipsoid-like shell of scalp and skull around a brain with a grey-matter
cortex, white matter, deep grey nuclei, sulci, an interhemispheric fissure, lateral, third and
fourth ventricles and basal cisterns. Everything is defined in millimetres in a head frame
(``ux`` to the patient's left, ``uy`` posterior, height ``h`` from 0 at the skull base to 1 at
the vertex), so one head renders on any pixel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue codes of the label map returned with every rendered slice.
AIR, SCALP, BONE, CSF_SURFACE, SULCUS, FISSURE, CISTERN, VENTRICLE, GREY, WHITE, DEEP_GREY = range(11)
TISSUE_NAMES = (
    "air",
    "scalp",
    "bone",
    "surface CSF",
    "sulcus",
    "fissure",
    "cistern",
    "ventricle",
    "grey matter",
    "white matter",
    "deep grey matter",
)
PARENCHYMA = (GREY, WHITE, DEEP_GREY)
SUBARACHNOID_SPACE = (CSF_SURFACE, SULCUS, FISSURE, CISTERN)

# Nominal Hounsfield units; each head draws its own values around these.
AIR_HU = -1000.0
CSF_HU = 8.0
SCALP_HU = 35.0
CORTICAL_BONE_HU = (1100.0, 1500.0)
DIPLOE_HU = (550.0, 750.0)

# Heights (fraction of the head from skull base to vertex) of the structures that come and go.
WIDEST_HEIGHT = 0.35
CISTERN_HEIGHTS = (0.18, 0.34)
THIRD_VENTRICLE_HEIGHTS = (0.30, 0.46)
FOURTH_VENTRICLE_HEIGHTS = (0.06, 0.2)
DEEP_GREY_HEIGHTS = (0.34, 0.52)


@dataclass
class HeadSpec:
    """One patient's head: size, pose, layer thicknesses, tissue values and brain structures.

    Lengths are millimetres and angles radians; ``height_mm`` is the head's extent along the
    slice normal covered by the series.
    """

    center: tuple[float, float]  # head centre in the image plane, mm from the grid centre
    rotation: float  # in-plane rotation of the head frame
    half_width: float  # outer skin, left to right, at the widest level
    half_length: float  # outer skin, anterior to posterior, at the widest level
    height_mm: float
    scalp: float
    skull: float
    csf_layer: float  # subarachnoid CSF between inner table and cortex
    cortex: float
    grey_hu: float
    white_hu: float
    bone_hu: float
    diploe_hu: float
    ventricle_half_width: float
    ventricle_half_length: float
    ventricle_half_height: float  # fraction of the head height
    ventricle_height: float  # centre, fraction of the head height
    ventricle_offset: float  # lateral distance of each ventricle centre from the midline
    sulcus_angles: np.ndarray  # (S,) angle of each sulcus at the mid height
    sulcus_drift: np.ndarray  # (S,) change of that angle from skull base to vertex
    sulcus_depths: np.ndarray  # (S,) mm below the brain surface
    sulcus_width: float


def sample_head(rng: np.random.Generator, height_mm: float) -> HeadSpec:
    """Draw one patient's head.

    Parameters
    ----------
    rng
        Generator that owns this patient's randomness.
    height_mm
        Extent of the head along the slice normal, the series' coverage in mm.
    """
    n_sulci = int(rng.integers(44, 60))
    atrophy = rng.uniform(0.0, 1.0)  # older brains: wider sulci and larger ventricles
    return HeadSpec(
        center=(float(rng.uniform(-12, 12)), float(rng.uniform(-10, 10))),
        rotation=float(rng.uniform(-0.18, 0.18)),
        half_width=float(rng.uniform(68, 78)),
        half_length=float(rng.uniform(86, 98)),
        height_mm=float(height_mm),
        scalp=float(rng.uniform(4, 6.5)),
        skull=float(rng.uniform(5.5, 8)),
        csf_layer=float(rng.uniform(0.8, 1.6) + atrophy),
        cortex=float(rng.uniform(3, 4.5)),
        grey_hu=float(rng.uniform(35, 40)),
        white_hu=float(rng.uniform(25, 30)),
        bone_hu=float(rng.uniform(*CORTICAL_BONE_HU)),
        diploe_hu=float(rng.uniform(*DIPLOE_HU)),
        ventricle_half_width=float(rng.uniform(4.5, 6.5) + 2.5 * atrophy),
        ventricle_half_length=float(rng.uniform(24, 30) + 4 * atrophy),
        ventricle_half_height=float(rng.uniform(0.13, 0.17)),
        ventricle_height=float(rng.uniform(0.52, 0.58)),
        ventricle_offset=float(rng.uniform(7, 9) + 2 * atrophy),
        sulcus_angles=np.sort(rng.uniform(-np.pi, np.pi, n_sulci)),
        sulcus_drift=rng.uniform(-0.25, 0.25, n_sulci),
        sulcus_depths=rng.uniform(7, 15, n_sulci),
        sulcus_width=float(rng.uniform(1.6, 2.2) + 1.2 * atrophy),
    )


def size_factor(h: float) -> float:
    """Return the head's cross-section scale at height ``h`` (1 at the widest level)."""
    if h >= WIDEST_HEIGHT:
        top = (h - WIDEST_HEIGHT) / (1.02 - WIDEST_HEIGHT)
        return float(np.sqrt(max(0.0, 1.0 - top**2)))
    bottom = (WIDEST_HEIGHT - h) / WIDEST_HEIGHT
    return float(1.0 - 0.22 * bottom**2)


@dataclass
class SliceFields:
    """Per-pixel geometry of one slice in the head frame, shared by anatomy and lesions.

    Every array is (H, W) float32 in mm or radians, except ``tissue`` (H, W) uint8.
    """

    h: float  # height of the slice, fraction of the head height
    z_mm: float  # height of the slice, mm above the skull base
    ux: np.ndarray  # towards the patient's left
    uy: np.ndarray  # towards posterior
    theta: np.ndarray  # angle of the pixel around the head centre
    radius: np.ndarray  # distance from the head centre
    inner_radius: np.ndarray  # radius of the inner table along the pixel's direction
    depth: np.ndarray  # radial depth below the inner table; negative in bone and scalp
    sulcus_distance: np.ndarray  # across-sulcus distance to the nearest sulcus centre line
    sulcus_depth: np.ndarray  # depth reached by that nearest sulcus
    tissue: np.ndarray


def wrap_angle(angle):
    """Return ``angle`` in radians wrapped into [-pi, pi)."""
    return angle - (2 * np.pi) * np.floor((angle + np.pi) / (2 * np.pi))


def pixel_grid(rows: int, columns: int, pixel_spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the (rows, columns) x and y coordinates of pixel centres in mm from the grid centre."""
    x = (np.arange(columns, dtype=np.float32) - (columns - 1) / 2) * pixel_spacing
    y = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * pixel_spacing
    return np.meshgrid(x, y)  # (H, W) each


def slice_fields(head: HeadSpec, z_mm: float, x: np.ndarray, y: np.ndarray) -> SliceFields:
    """Compute the head-frame geometry and the tissue map of the slice at height ``z_mm``.

    Parameters
    ----------
    head
        The patient's head.
    z_mm
        Height of the slice above the skull base, in mm.
    x, y
        (H, W) pixel centres in mm, from :func:`pixel_grid`.
    """
    h = z_mm / head.height_mm
    scale = size_factor(h)
    cos_r, sin_r = np.cos(head.rotation), np.sin(head.rotation)
    dx = x - head.center[0]
    dy = y - head.center[1]
    ux = (cos_r * dx + sin_r * dy).astype(np.float32)
    uy = (-sin_r * dx + cos_r * dy).astype(np.float32)
    theta = np.arctan2(uy, ux)
    radius = np.hypot(ux, uy)

    # Radius of the skin ellipse along each pixel's direction, then of the inner table.
    a = head.half_width * scale
    b = head.half_length * scale
    skin_radius = 1.0 / np.sqrt((np.cos(theta) / a) ** 2 + (np.sin(theta) / b) ** 2)
    # Near the vertex the shell is cut obliquely, so scalp and bone look thicker.
    oblique = max(scale, 0.45) ** 0.5
    skull = head.skull / oblique
    inner_radius = np.maximum(skin_radius - (head.scalp + head.skull) / oblique, 1.0)
    depth = inner_radius - radius  # (H, W) mm below the inner table

    tissue = np.full(x.shape, AIR, dtype=np.uint8)
    below_skin = radius <= skin_radius
    tissue[below_skin] = SCALP
    tissue[below_skin & (depth >= -skull)] = BONE
    brain = depth >= 0
    tissue[brain] = WHITE
    tissue[brain & (depth < head.csf_layer + head.cortex)] = GREY
    tissue[brain & (depth < head.csf_layer)] = CSF_SURFACE

    _add_deep_grey(tissue, brain, ux, uy, h)
    sulcus_distance, sulcus_depth = _sulcus_geometry(head, theta, radius, h)
    sulcus = brain & (depth >= head.csf_layer) & (sulcus_distance < head.sulcus_width / 2) & (depth < sulcus_depth)
    tissue[sulcus] = SULCUS
    _add_midline_and_ventricles(head, tissue, brain, ux, uy, h, depth)

    return SliceFields(
        h=h,
        z_mm=z_mm,
        ux=ux,
        uy=uy,
        theta=theta,
        radius=radius,
        inner_radius=inner_radius,
        depth=depth,
        sulcus_distance=sulcus_distance,
        sulcus_depth=sulcus_depth,
        tissue=tissue,
    )


def _sulcus_geometry(head: HeadSpec, theta: np.ndarray, radius: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    # Sulcus centre lines run radially inwards from the surface and turn slowly with height.
    angles = head.sulcus_angles + head.sulcus_drift * (h - 0.5)
    angles = wrap_angle(angles)
    order = np.argsort(angles)
    angles = angles[order]
    depths = head.sulcus_depths[order]

    # Nearest sulcus for each pixel from a lookup table over the angle.
    n_bins = 2048
    bins = np.linspace(-np.pi, np.pi, n_bins, endpoint=False) + np.pi / n_bins
    gaps = np.abs(wrap_angle(bins[:, None] - angles[None, :]))  # (bins, S)
    nearest = np.argmin(gaps, axis=1)
    pixel_bin = ((theta + np.pi) / (2 * np.pi) * n_bins).astype(np.int64) % n_bins
    pixel_sulcus = nearest[pixel_bin]
    gap = np.abs(wrap_angle(theta - angles[pixel_sulcus].astype(np.float32)))
    return (gap * radius).astype(np.float32), depths[pixel_sulcus].astype(np.float32)


def _add_deep_grey(tissue: np.ndarray, brain: np.ndarray, ux: np.ndarray, uy: np.ndarray, h: float) -> None:
    low, high = DEEP_GREY_HEIGHTS
    if not low <= h <= high:
        return
    vertical = 1 - ((h - (low + high) / 2) / ((high - low) / 2)) ** 2
    nuclei = ((np.abs(ux) - 17) / (7 * vertical**0.5)) ** 2 + ((uy - 2) / (13 * vertical**0.5)) ** 2 < 1
    tissue[brain & nuclei & (tissue == WHITE)] = DEEP_GREY


def _add_midline_and_ventricles(
    head: HeadSpec, tissue: np.ndarray, brain: np.ndarray, ux: np.ndarray, uy: np.ndarray, h: float, depth: np.ndarray
) -> None:
    # Interhemispheric fissure: in front of and behind the ventricles, and everywhere near the vertex.
    top_of_ventricles = head.ventricle_height + head.ventricle_half_height
    outside_ventricle_span = np.abs(uy) > head.ventricle_half_length + 6
    fissure = (np.abs(ux) < 1.1) & (outside_ventricle_span | (h > top_of_ventricles))
    tissue[brain & fissure & (depth >= head.csf_layer)] = FISSURE

    # Lateral ventricles: two ellipsoids whose frontal horns converge towards the midline.
    vertical = 1 - ((h - head.ventricle_height) / head.ventricle_half_height) ** 2
    if vertical > 0:
        for side in (-1.0, 1.0):
            angle = side * 0.14
            local_x = (ux - side * head.ventricle_offset) * np.cos(angle) + (uy - 3) * np.sin(angle)
            local_y = -(ux - side * head.ventricle_offset) * np.sin(angle) + (uy - 3) * np.cos(angle)
            inside = (local_x / head.ventricle_half_width) ** 2 + (local_y / head.ventricle_half_length) ** 2 < vertical
            tissue[brain & inside] = VENTRICLE

    if THIRD_VENTRICLE_HEIGHTS[0] <= h <= THIRD_VENTRICLE_HEIGHTS[1]:
        tissue[brain & (np.abs(ux) < 1.8) & (np.abs(uy - 4) < 11)] = VENTRICLE

    if CISTERN_HEIGHTS[0] <= h <= CISTERN_HEIGHTS[1]:
        # Basal cisterns: a ring of CSF around the midbrain.
        distance = np.hypot(ux, (uy - 14) * 0.9)
        tissue[brain & (distance >= 11) & (distance < 15.5)] = CISTERN
        tissue[brain & (distance < 11)] = DEEP_GREY

    if FOURTH_VENTRICLE_HEIGHTS[0] <= h <= FOURTH_VENTRICLE_HEIGHTS[1]:
        tissue[brain & ((ux / 6) ** 2 + ((uy - 30) / 4) ** 2 < 1)] = VENTRICLE


def tissue_hu(head: HeadSpec, tissue: np.ndarray) -> np.ndarray:
    """Return the (H, W) float32 HU image of a tissue map, before texture, lesions and noise."""
    values = np.zeros(len(TISSUE_NAMES), dtype=np.float32)
    values[AIR] = AIR_HU
    values[SCALP] = SCALP_HU
    values[BONE] = head.bone_hu
    values[[CSF_SURFACE, SULCUS, FISSURE, CISTERN, VENTRICLE]] = CSF_HU
    values[GREY] = head.grey_hu
    values[WHITE] = head.white_hu
    values[DEEP_GREY] = (head.grey_hu + head.white_hu) / 2 + 3
    return values[tissue]


def bone_hu(head: HeadSpec, fields: SliceFields) -> np.ndarray:
    """Return (H, W) HU for bone pixels: cortical inner and outer tables with diploe between them."""
    scale = max(size_factor(fields.h), 0.45) ** 0.5
    skull = head.skull / scale
    into_skull = np.clip(-fields.depth / skull, 0, 1)  # 0 at the inner table, 1 at the outer
    diploe_weight = np.clip(1 - np.abs(into_skull - 0.5) / 0.22, 0, 1)
    return (head.bone_hu + (head.diploe_hu - head.bone_hu) * diploe_weight).astype(np.float32)
