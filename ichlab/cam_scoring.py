"""Scores for Grad-CAM maps on slices whose true lesion masks are known (the generated data).

Two scores per map and subtype: the pointing game (does the hottest point fall inside the
lesion mask, grown by a tolerance?) and the share of the map's mass inside the mask. Each
is shown beside the same score of a baseline that ignores the image, a Gaussian centred on
the slice, which separates a map that finds lesions from one that favours the image centre.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from ichlab import SUBTYPES

logger = logging.getLogger(__name__)

# Pointing-game tolerance: 15 px at 224 px (Zhang et al., "Top-down neural attention by
# excitation backprop", ECCV 2016), kept as the same fraction of the image side.
TOLERANCE_FRACTION = 15 / 224

# The baseline map: a Gaussian centred on the slice, standard deviation this fraction of the side.
BASELINE_SIGMA_FRACTION = 0.25

SCORE_COLUMNS = [
    "model",
    "subtype",
    "n_slices",
    "n_empty",
    "pointing_game",
    "baseline_pointing_game",
    "mass_in_mask",
    "baseline_mass_in_mask",
    "mask_area_fraction",
]


def tolerance_pixels(image_size: int) -> int:
    """Return the pointing-game tolerance in pixels for square images of ``image_size`` pixels."""
    return max(1, round(TOLERANCE_FRACTION * image_size))


def dilate_mask(mask: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Grow a (H, W) mask by every pixel within ``tolerance_px`` (Euclidean) of it."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    distance = ndimage.distance_transform_edt(~mask)  # (H, W) px to the nearest mask pixel
    return distance <= tolerance_px


def hottest_point(cam: np.ndarray) -> tuple[int, int]:
    """Return the (row, column) of a map's maximum; tied maxima give their rounded centroid.

    Bilinear upsampling of a coarse map often gives a 2 x 2 block of equal maxima, whose
    centroid is the peak that the feature map meant.
    """
    rows, columns = np.nonzero(cam == cam.max())
    return int(np.round(rows.mean())), int(np.round(columns.mean()))


def pointing_game_hit(cam: np.ndarray, mask: np.ndarray, tolerance_px: float) -> bool:
    """Return True when the map's hottest point lies inside the mask grown by ``tolerance_px``."""
    row, column = hottest_point(cam)
    return bool(dilate_mask(mask, tolerance_px)[row, column])


def mass_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Return the share of the map's total value inside the mask (0 for an all-zero map)."""
    total = float(cam.sum())
    if total <= 0:
        return 0.0
    return float(cam[np.asarray(mask, dtype=bool)].sum()) / total


def centred_gaussian(height: int, width: int, sigma_fraction: float = BASELINE_SIGMA_FRACTION) -> np.ndarray:
    """Return a (H, W) float32 Gaussian in [0, 1] centred on the image: the image-independent baseline."""
    rows = np.arange(height, dtype=np.float32) - (height - 1) / 2
    columns = np.arange(width, dtype=np.float32) - (width - 1) / 2
    sigma = sigma_fraction * min(height, width)
    squared = rows[:, None] ** 2 + columns[None, :] ** 2  # (H, W)
    return np.exp(-squared / (2 * sigma**2)).astype(np.float32)


def score_maps(maps: np.ndarray, masks: np.ndarray, *, empty: np.ndarray | None = None, tolerance_px: float | None = None) -> pd.DataFrame:
    """Score each map against its mask, beside the centred-Gaussian baseline.

    Parameters
    ----------
    maps
        (N, H, W) CAM maps in [0, 1].
    masks
        (N, H, W) lesion masks of the explained subtype, bool or 0/1; each must be non-empty.
    empty
        (N,) bool, True for maps reported empty. An empty map scores a miss and mass 0:
        a map that points nowhere has not found the lesion.
    tolerance_px
        Pointing-game tolerance; default :func:`tolerance_pixels` of the image width.

    Returns
    -------
    pandas.DataFrame
        One row per map: ``empty``, ``hit``, ``mass_in_mask``, ``baseline_hit``,
        ``baseline_mass_in_mask`` and ``mask_area_fraction`` (the mass share of a uniform map).

    Raises
    ------
    ValueError
        If shapes differ or a mask is empty.
    """
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks).astype(bool)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W) of one shape")
    empty = np.zeros(len(maps), dtype=bool) if empty is None else np.asarray(empty, dtype=bool)
    if empty.shape != (len(maps),):
        raise ValueError(f"empty has shape {empty.shape}, expected ({len(maps)},)")
    blank = ~masks.reshape(len(masks), -1).any(axis=1)
    if blank.any():
        raise ValueError(f"masks {np.flatnonzero(blank).tolist()} are empty; score only slices where the lesion is drawn")
    height, width = maps.shape[1:]
    tolerance_px = tolerance_pixels(width) if tolerance_px is None else tolerance_px
    baseline = centred_gaussian(height, width)

    rows = []
    for cam, mask, is_empty in zip(maps, masks, empty):
        rows.append(
            {
                "empty": bool(is_empty),
                "hit": False if is_empty else pointing_game_hit(cam, mask, tolerance_px),
                "mass_in_mask": 0.0 if is_empty else mass_in_mask(cam, mask),
                "baseline_hit": pointing_game_hit(baseline, mask, tolerance_px),
                "baseline_mass_in_mask": mass_in_mask(baseline, mask),
                "mask_area_fraction": float(mask.mean()),
            }
        )
    return pd.DataFrame(rows, columns=["empty", "hit", "mass_in_mask", "baseline_hit", "baseline_mass_in_mask", "mask_area_fraction"])


def summarise_scores(per_slice: pd.DataFrame) -> pd.DataFrame:
    """Average per-slice scores (with ``model`` and ``subtype`` columns) into one row per model and subtype.

    Returns
    -------
    pandas.DataFrame
        Columns ``SCORE_COLUMNS``; rates and shares are means over the scored slices.
    """
    if per_slice.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    grouped = per_slice.groupby(["model", "subtype"], sort=False)
    summary = grouped.agg(
        n_slices=("hit", "size"),
        n_empty=("empty", "sum"),
        pointing_game=("hit", "mean"),
        baseline_pointing_game=("baseline_hit", "mean"),
        mass_in_mask=("mass_in_mask", "mean"),
        baseline_mass_in_mask=("baseline_mass_in_mask", "mean"),
        mask_area_fraction=("mask_area_fraction", "mean"),
    ).reset_index()
    summary["n_empty"] = summary["n_empty"].astype(int)
    return summary[SCORE_COLUMNS]


def scored_rows(cache, split: str, subtype: str, *, max_slices: int | None = None, seed: int = 0) -> np.ndarray:
    """Return the cache rows of ``split`` labelled ``subtype`` whose mask of that subtype is non-empty.

    With ``max_slices``, a seeded random sample of that many rows, in cache order.
    """
    index = cache.index
    column = SUBTYPES.index(subtype)
    candidates = np.flatnonzero(
        (index["split"].to_numpy() == split) & (index[subtype].to_numpy() == 1) & index["has_mask"].to_numpy(dtype=bool)
    )
    drawn = cache.masks[candidates, column].reshape(len(candidates), -1).any(axis=1) if len(candidates) else np.zeros(0, bool)
    rows = candidates[drawn]
    if max_slices is not None and len(rows) > max_slices:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_slices, replace=False))
    return rows


def cam_scores_per_slice(
    models: Mapping[str, object],
    cache,
    split: str = "test",
    *,
    context_slices: int = 3,
    subtypes: Sequence[str] = SUBTYPES,
    max_slices_per_subtype: int | None = None,
    tolerance_px: float | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Compute and score the CAM of each model on every masked positive slice of a split.

    Each slice is explained for its true subtype, whatever the model predicted, so a
    model that misses a lesion also scores on it.

    Parameters
    ----------
    models
        Name (for example ``"2d"``) to model from ``ichlab.models.build_model``. A model's
        ``arch`` attribute, else its name, selects the input it gets from the cache.
    cache
        A ``SliceCache`` with ``masks`` (generated data).
    split
        ``"train"``, ``"val"`` or ``"test"``.
    max_slices_per_subtype
        Score at most this many slices per subtype (a seeded sample, the same for every model).

    Returns
    -------
    pandas.DataFrame
        One row per model, subtype and slice: ``model``, ``subtype``, ``row``, ``image_id``
        and the columns of :func:`score_maps`.

    Raises
    ------
    ValueError
        If the cache has no lesion masks (RSNA data).
    """
    from ichlab.cam import compute_cams
    from ichlab.cam import cache_inputs

    if getattr(cache, "masks", None) is None:
        raise ValueError(
            "this cache has no lesion masks, so CAMs cannot be scored; scoring needs the generated "
            "dataset (RSNA labels give no lesion outlines)"
        )
    plan = [(subtype, scored_rows(cache, split, subtype, max_slices=max_slices_per_subtype, seed=seed)) for subtype in subtypes]
    total = len(models) * sum(len(rows) for _, rows in plan)
    logger.info("scoring %d CAMs (%d models) on the %s split", total, len(models), split)

    tables = []
    with tqdm(total=total, desc="Grad-CAM scores", unit="map", disable=not progress) as bar:
        for name, model in models.items():
            arch = getattr(model, "arch", name)
            for subtype, rows in plan:
                if len(rows) == 0:
                    logger.info("%s: no masked %s slice in the %s split", name, subtype, split)
                    continue
                column = SUBTYPES.index(subtype)
                for start in range(0, len(rows), batch_size):
                    batch_rows = rows[start:start + batch_size]
                    images = cache_inputs(cache, batch_rows, arch, context_slices)
                    result = compute_cams(model, images, [subtype] * len(batch_rows))
                    scores = score_maps(result.maps, cache.masks[batch_rows, column], empty=result.empty, tolerance_px=tolerance_px)
                    scores.insert(0, "image_id", cache.index["image_id"].to_numpy()[batch_rows])
                    scores.insert(0, "row", batch_rows)
                    scores.insert(0, "subtype", subtype)
                    scores.insert(0, "model", name)
                    tables.append(scores)
                    bar.update(len(batch_rows))
    if not tables:
        logger.warning("no masked positive slice in the %s split: nothing was scored", split)
        return pd.DataFrame(columns=["model", "subtype", "row", "image_id", "empty", "hit", "mass_in_mask", "baseline_hit", "baseline_mass_in_mask", "mask_area_fraction"])
    return pd.concat(tables, ignore_index=True)


def score_cams(models: Mapping[str, object], cache, split: str = "test", **options) -> pd.DataFrame:
    """Score the CAMs of each model per subtype beside the centred-Gaussian baseline.

    Takes the arguments of :func:`cam_scores_per_slice` and returns its table summarised by
    :func:`summarise_scores`: one row per model and subtype with ``n_slices``, ``n_empty``,
    ``pointing_game`` (hit rate), ``mass_in_mask`` (mean share), the baseline's two scores
    and ``mask_area_fraction``.
    """
    return summarise_scores(cam_scores_per_slice(models, cache, split, **options))


def scores_to_markdown(scores: pd.DataFrame) -> str:
    """Format a :func:`score_cams` table as a Markdown table with a one-line explanation."""
    header = "| model | subtype | slices | empty | pointing game | baseline | mass in mask | baseline | mask area |"
    lines = [
        "Grad-CAM scored against the generated lesion masks: the pointing game is the share of "
        "maps whose hottest point falls inside the mask (grown by a tolerance), the mass is the "
        "mean share of the map inside the mask; the baseline is a centred Gaussian that ignores the image.",
        "",
        header,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for record in scores.to_dict("records"):
        lines.append(
            f"| {record['model']} | {record['subtype']} | {record['n_slices']} | {record['n_empty']} "
            f"| {record['pointing_game']:.2f} | {record['baseline_pointing_game']:.2f} "
            f"| {record['mass_in_mask']:.2f} | {record['baseline_mass_in_mask']:.2f} | {record['mask_area_fraction']:.3f} |"
        )
    if scores.empty:
        lines.append("| (no masked positive slice to score) | | | | | | | | |")
    return "\n".join(lines)
