"""Slice order along the slice normal, per-series spacing checks, and neighbour windows.

Slices are ordered by the projection of ImagePositionPatient onto the slice normal (the cross
product of the two ImageOrientationPatient direction vectors). File names, InstanceNumber,
SliceLocation and the z coordinate are not used: with a tilted gantry z is not the distance
between slices, and the other three are whatever the scanner or an anonymiser wrote.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Gaps along the normal that differ by at most this many mm count as one spacing; a series
# whose largest and smallest gaps differ by more has irregular spacing.
SPACING_TOLERANCE_MM = 0.1
# Two positions closer than this are duplicates (the same slice stored twice).
DUPLICATE_MM = 0.01
# A gap below this fraction of the slice thickness is a near-duplicate, as in two interleaved
# stacks stored as one series.
NEAR_DUPLICATE_FRACTION = 0.2


def _as_vectors(column: pd.Series, width: int, name: str) -> np.ndarray:
    values = np.full((len(column), width), np.nan, dtype=np.float64)
    for row, value in enumerate(column):
        if value is None or (np.ndim(value) == 0 and pd.isna(value)):
            continue
        vector = np.asarray(value, dtype=np.float64).ravel()
        if vector.size != width:
            raise ValueError(f"{name} must contain {width} numbers per slice, got {value!r}")
        values[row] = vector
    return values


def slice_normals(orientation: pd.Series) -> np.ndarray:
    """Return unit slice normals (N, 3) from ImageOrientationPatient values (6 floats each)."""
    directions = _as_vectors(orientation, 6, "orientation")
    normals = np.cross(directions[:, :3], directions[:, 3:])  # (N, 3)
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return normals / lengths


def order_slices(headers: pd.DataFrame) -> pd.DataFrame:
    """Sort slices by series, then by position along the series' slice normal.

    Parameters
    ----------
    headers
        A header table with at least ``series_uid``, ``position`` (3 floats, mm) and
        ``orientation`` (6 floats), such as ``ichlab.dicom.scan_headers(folder).headers``.

    Returns
    -------
    pandas.DataFrame
        A copy sorted by ``series_uid`` then ``slice_position_mm``, with a fresh RangeIndex and
        two added columns: ``slice_position_mm`` (ImagePositionPatient projected onto the
        series' mean unit normal) and ``slice_index`` (0-based within the series). Ties are
        broken by ``sop_uid``, then ``image_id``, then ``file`` where those columns exist.

    Raises
    ------
    ValueError
        If a row lacks a position or orientation, naming its file or image id.
    """
    for column in ("series_uid", "position", "orientation"):
        if column not in headers.columns:
            raise ValueError(f"header table has no {column!r} column; build it with ichlab.dicom.scan_headers")
    table = headers.copy()
    if table.empty:
        table["slice_position_mm"] = pd.Series(dtype=np.float64)
        table["slice_index"] = pd.Series(dtype=np.int64)
        return table.reset_index(drop=True)

    positions = _as_vectors(table["position"], 3, "position")  # (N, 3)
    normals = slice_normals(table["orientation"])  # (N, 3)
    incomplete = np.isnan(positions).any(axis=1) | np.isnan(normals).any(axis=1)
    if incomplete.any():
        first_row = int(np.argmax(incomplete))
        first = first_row
        for label_column in ("file", "image_id"):
            if label_column in table.columns:
                first = table[label_column].iloc[first_row]
                break
        raise ValueError(
            f"{int(incomplete.sum())} slice(s) lack ImagePositionPatient or a valid ImageOrientationPatient "
            f"(first: {first}); drop them before ordering"
        )

    # One normal per series (the mean of its slices' normals), so every slice of a series is
    # projected onto the same axis.
    series_normals = pd.DataFrame(normals, index=table.index).groupby(table["series_uid"].to_numpy()).transform("mean")
    series_normals = series_normals.to_numpy(copy=True)
    series_normals /= np.linalg.norm(series_normals, axis=1, keepdims=True)
    table["slice_position_mm"] = np.einsum("ij,ij->i", positions, series_normals)

    sort_columns = ["series_uid", "slice_position_mm"]
    sort_columns += [column for column in ("sop_uid", "image_id", "file") if column in table.columns]
    table = table.sort_values(sort_columns, kind="mergesort").reset_index(drop=True)
    table["slice_index"] = table.groupby("series_uid").cumcount().astype(np.int64)
    return table


def _spacing_runs(gaps: np.ndarray, tolerance_mm: float) -> list[tuple[float, int]]:
    runs: list[tuple[float, int]] = []
    for gap in gaps:
        if runs and abs(runs[-1][0] - gap) <= tolerance_mm:
            spacing, count = runs[-1]
            runs[-1] = ((spacing * count + gap) / (count + 1), count + 1)
        else:
            runs.append((float(gap), 1))
    return [(round(float(spacing), 2), count) for spacing, count in runs]


def _reference_spacing(group: pd.DataFrame, gaps: np.ndarray, median: float) -> np.ndarray:
    # Each gap is judged against the thinner of its two slices, because the median gap of two
    # interleaved stacks is the small offset between them. Without SliceThickness the median
    # gap is the reference.
    reference = np.full(gaps.shape, median)
    if "slice_thickness" in group.columns and gaps.size:
        thickness = pd.to_numeric(group["slice_thickness"], errors="coerce").to_numpy(dtype=np.float64)
        thinner = np.minimum(thickness[:-1], thickness[1:])
        reference = np.where(np.isfinite(thinner) & (thinner > 0), thinner, reference)
    return reference


def series_report(
    headers: pd.DataFrame,
    *,
    tolerance_mm: float = SPACING_TOLERANCE_MM,
    duplicate_mm: float = DUPLICATE_MM,
    near_duplicate_fraction: float = NEAR_DUPLICATE_FRACTION,
) -> pd.DataFrame:
    """Summarise each series' slice count and spacing along the slice normal.

    Parameters
    ----------
    headers
        A header table (ordered or not); it is ordered with :func:`order_slices` first.
    tolerance_mm
        Gaps within this many mm of each other count as one spacing.
    duplicate_mm
        Gaps below this are duplicate positions.
    near_duplicate_fraction
        Gaps of at least ``duplicate_mm`` but below this fraction of the thinner neighbouring
        SliceThickness (or of the median gap when the table has no thickness) are
        near-duplicates, as in two interleaved stacks stored as one series.

    Returns
    -------
    pandas.DataFrame
        One row per series, indexed by ``series_uid``, with ``n_slices``, ``spacing_mm`` (median
        gap), ``min_spacing_mm``, ``max_spacing_mm``, ``spacing_runs`` (list of
        (spacing mm, number of gaps) in slice order, spacings rounded to 0.01 mm),
        ``irregular_spacing`` (bool), ``n_duplicates`` and ``n_near_duplicates``. Spacings
        are NaN for a one-slice series.
    """
    ordered = order_slices(headers)
    rows = []
    for series_uid, group in ordered.groupby("series_uid", sort=True):
        gaps = np.diff(group["slice_position_mm"].to_numpy())  # (n - 1,)
        if gaps.size == 0:
            median = minimum = maximum = float("nan")
        else:
            median, minimum, maximum = float(np.median(gaps)), float(gaps.min()), float(gaps.max())
        duplicates = int((gaps < duplicate_mm).sum())
        reference = _reference_spacing(group, gaps, median)  # (n - 1,)
        near_duplicates = int(((gaps >= duplicate_mm) & (gaps < near_duplicate_fraction * reference)).sum())
        rows.append(
            {
                "series_uid": series_uid,
                "n_slices": len(group),
                "spacing_mm": median,
                "min_spacing_mm": minimum,
                "max_spacing_mm": maximum,
                "spacing_runs": _spacing_runs(gaps, tolerance_mm),
                "irregular_spacing": bool(gaps.size and (maximum - minimum) > tolerance_mm),
                "n_duplicates": duplicates,
                "n_near_duplicates": near_duplicates,
            }
        )
    columns = [
        "series_uid", "n_slices", "spacing_mm", "min_spacing_mm", "max_spacing_mm", "spacing_runs",
        "irregular_spacing", "n_duplicates", "n_near_duplicates",
    ]
    return pd.DataFrame(rows, columns=columns).set_index("series_uid")


def neighbour_indices(n_slices: int, k: int = 3) -> np.ndarray:
    """Return, for each slice, the indices of the K slices centred on it.

    Slice i uses i - K//2 .. i + K//2; indices beyond either end repeat the edge slice, so a
    one-slice series repeats itself K times.

    Parameters
    ----------
    n_slices
        Number of slices in the series (0 or more).
    k
        Window length, odd and positive (3, 5, 7, ...).

    Returns
    -------
    numpy.ndarray
        int64 shaped (n_slices, k); the middle column is ``arange(n_slices)``.

    Raises
    ------
    ValueError
        If ``k`` is even or not positive, or ``n_slices`` is negative.
    """
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k must be an odd positive number of slices, got {k}")
    if n_slices < 0:
        raise ValueError(f"n_slices must be 0 or more, got {n_slices}")
    offsets = np.arange(k, dtype=np.int64) - k // 2  # (k,)
    indices = np.arange(n_slices, dtype=np.int64)[:, None] + offsets[None, :]  # (n_slices, k)
    return np.clip(indices, 0, max(n_slices - 1, 0))
