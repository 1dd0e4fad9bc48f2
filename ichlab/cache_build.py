"""Build a ``SliceCache``: decode every slice once, in resumable chunks, and publish it atomically.

The work happens in ``<cache>.partial/``: ``hu.npy`` and ``masks.npy`` are preallocated
memory maps, and ``status.npy`` marks each slice pending, done or failed after its chunk's
data is flushed, so an interrupted build resumes at the last finished chunk. When every
chunk is done, the index and manifest are written and the folder replaces ``<cache>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ichlab import SUBTYPES
from ichlab.cache import (
    BUILD_FILE,
    CACHE_VERSION,
    CacheError,
    FAILURES_FILE,
    HAS_MASK_FILE,
    HU_FILE,
    INDEX_COLUMNS,
    INDEX_FILE,
    MANIFEST_FILE,
    MASK_FILE,
    SKIPPED_FILE,
    STATUS_FILE,
    SliceCache,
    _partial_dir,
    _plain,
    read_index,
)
from ichlab.splits import SPLITS, check_no_leakage

logger = logging.getLogger(__name__)

_PENDING, _DONE, _FAILED = 0, 1, 2


def build_cache(
    table: pd.DataFrame,
    cache_dir: str | Path,
    image_size: int,
    *,
    mask_root: str | Path | None = None,
    skipped: pd.DataFrame | None = None,
    request: dict | None = None,
    num_workers: int = 0,
    chunk_size: int = 64,
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
) -> SliceCache:
    """Decode, resize and store every slice of ``table``; reuse or resume earlier work.

    A cache whose pixel key (files, their order, ``image_size``, masks) and index key (ids,
    splits, labels) both match is reused as it is. When only the index key differs, only
    ``index.csv`` is rewritten. Otherwise the slices are decoded into ``<cache_dir>.partial``
    chunk by chunk, recording finished chunks after their data is flushed, so an interrupted
    build resumes where it stopped. The finished folder then replaces ``cache_dir``.

    Parameters
    ----------
    table
        One row per slice with ``file``, ``image_id``, ``patient_id``, ``series_uid``,
        ``slice_index``, ``split`` and ``ichlab.LABEL_COLUMNS``; ``pixel_spacing`` (row,
        column mm) is used when present so that non-square pixels keep their aspect ratio.
    cache_dir
        The finished cache folder.
    image_size
        Side S of the cached square slices in pixels (``ichlab.geometry.to_square``).
    mask_root
        A generated dataset folder whose lesion masks (``ichlab.phantom.load_masks``) are
        cached too, resized with nearest-neighbour interpolation; None for RSNA data.
    skipped
        ``file`` and ``reason`` of files already left out upstream (for example by the header
        scan); they are reported in ``SliceCache.skipped`` with the files that fail here.
    request
        Plain settings that produced ``table`` (source, seed, subset size); stored in the
        manifest so callers can reuse the cache without rescanning the data.
    num_workers
        Processes that decode DICOM; 0 or 1 decodes in this process.
    chunk_size
        Slices per chunk: the unit of progress that an interrupted build keeps.
    on_chunk
        Called after each finished chunk with (slices done, slices in total).

    Returns
    -------
    SliceCache
        The finished cache. Files that fail to decode are logged, left out and listed in
        ``skipped``; their series keep their other slices.
    """
    cache_dir = Path(cache_dir)
    table = _check_table(table)
    request = _plain(request or {})
    pixel_key = _hash(
        {
            "version": CACHE_VERSION,
            "image_size": int(image_size),
            "files": table["file"].astype(str).tolist(),
            "masks": str(mask_root) if mask_root is not None else None,
        }
    )
    index_key = _hash(table[[c for c in INDEX_COLUMNS if c != "has_mask"]].to_csv(index=False))

    existing = _manifest(cache_dir)
    if existing.get("pixel_key") == pixel_key:
        if existing.get("index_key") != index_key or existing.get("request") != request:
            logger.info("cache in %s has the same pixels but new labels or splits; rewriting its index", cache_dir)
            _rewrite_index(cache_dir, table, existing, index_key, request)
        try:
            cache = SliceCache.open(cache_dir)
        except CacheError as error:
            logger.warning("building the cache again, because the finished one cannot be opened: %s", error)
            shutil.rmtree(cache_dir)
        else:
            logger.info("reusing the cache in %s", cache_dir)
            return cache

    partial = _partial_dir(cache_dir)
    n = len(table)
    status = _open_partial(partial, pixel_key, n, image_size, masks=mask_root is not None)
    hu = np.load(partial / HU_FILE, mmap_mode="r+")
    masks = np.load(partial / MASK_FILE, mmap_mode="r+") if mask_root is not None else None
    has_mask = np.load(partial / HAS_MASK_FILE, mmap_mode="r+")
    failures = json.loads((partial / FAILURES_FILE).read_text())

    done = int((status != _PENDING).sum())
    if done:
        logger.info("resuming the build in %s: %d of %d slices already done", partial, done, n)
    chunks = [
        np.arange(start, min(start + chunk_size, n))
        for start in range(0, n, chunk_size)
        if (status[start : start + chunk_size] == _PENDING).any()
    ]
    spacings = _spacings(table)
    jobs = [(table["file"].to_numpy()[rows].tolist(), spacings[rows], int(image_size)) for rows in chunks]

    executor = ProcessPoolExecutor(num_workers) if num_workers > 1 and jobs else None
    if executor is not None:
        results = executor.map(_decode_chunk, *zip(*jobs))
    else:
        results = (_decode_chunk(*job) for job in jobs)
    bar = tqdm(total=n, initial=done, desc="caching slices", unit="slice", disable=not progress)
    try:
        for rows, (slices, errors) in zip(chunks, results):
            hu[rows] = slices  # (n_chunk, S, S) int16
            if masks is not None:
                has_mask[rows] = _store_masks(masks, rows, table, spacings, mask_root, int(image_size))
            hu.flush()
            if masks is not None:
                masks.flush()
            has_mask.flush()
            for position, reason in errors:
                failures[str(int(rows[position]))] = reason
            _write_atomic(partial / FAILURES_FILE, json.dumps(failures))
            chunk_status = np.full(len(rows), _DONE, dtype=np.int8)
            chunk_status[[position for position, _ in errors]] = _FAILED
            status[rows] = chunk_status
            status.flush()

            done += len(rows)
            bar.update(len(rows))
            if on_chunk is not None:
                on_chunk(done, n)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    del hu, masks, has_mask, status

    _finish(partial, cache_dir, table, failures, skipped, pixel_key, index_key, image_size, request)
    return SliceCache.open(cache_dir)


def _check_table(table: pd.DataFrame) -> pd.DataFrame:
    required = ("file", *[column for column in INDEX_COLUMNS if column != "has_mask"])
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise ValueError(f"slice table lacks column(s) {', '.join(missing)}; see the cache index in docs/ARCHITECTURE.md")
    unknown = sorted(set(table["split"]) - set(SPLITS))
    if unknown:
        raise ValueError(f"split values {unknown} are not one of {', '.join(SPLITS)}")
    repeated = table["image_id"][table["image_id"].duplicated()]
    if len(repeated):
        raise ValueError(f"{len(repeated)} image id(s) appear twice in the slice table, e.g. {repeated.iloc[0]}")
    check_no_leakage(table)
    # Series contiguous and in slice order, so neighbours are row offsets within a series.
    return table.sort_values(["patient_id", "series_uid", "slice_index"], kind="mergesort").reset_index(drop=True)


def _spacings(table: pd.DataFrame) -> np.ndarray:
    spacings = np.full((len(table), 2), np.nan)
    if "pixel_spacing" in table.columns:
        for row, value in enumerate(table["pixel_spacing"]):
            vector = np.asarray(value if value is not None else [np.nan, np.nan], dtype=float).ravel()
            if vector.size == 2 and np.all(vector > 0):
                spacings[row] = vector
    return spacings  # (N, 2) mm; NaN where unknown, meaning square pixels


def _decode_chunk(files: list[str], spacings: np.ndarray, image_size: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    from ichlab.dicom import load_hu
    from ichlab.geometry import AIR_HU, to_square

    slices = np.full((len(files), image_size, image_size), AIR_HU, dtype=np.int16)  # (n_chunk, S, S)
    errors = []
    for position, (file, spacing) in enumerate(zip(files, spacings)):
        try:
            hu = load_hu(file, warn_missing_rescale=False)  # the header scan reports missing tags once
            square = to_square(hu, image_size, pixel_spacing=None if np.isnan(spacing).any() else spacing)
        except (ValueError, OSError) as error:  # DicomError is a ValueError
            errors.append((position, f"{type(error).__name__}: {error}"))
            continue
        slices[position] = np.clip(np.rint(square), -32768, 32767).astype(np.int16)
    return slices, errors


def _store_masks(masks, rows, table, spacings, mask_root, image_size) -> np.ndarray:
    from ichlab.geometry import to_square
    from ichlab.phantom import load_masks

    image_ids = table["image_id"].to_numpy()[rows].tolist()
    found = load_masks(mask_root, image_ids, strict=False)
    present = np.zeros(len(rows), dtype=bool)
    for position, (row, image_id) in enumerate(zip(rows, image_ids)):
        if image_id not in found:
            continue
        spacing = spacings[row]
        square = to_square(
            np.asarray(found[image_id], dtype=np.uint8),  # (5, H, W)
            image_size,
            pixel_spacing=None if np.isnan(spacing).any() else spacing,
            interpolation="nearest",
        )
        masks[row] = square  # (5, S, S) uint8
        present[position] = True
    return present


def _open_partial(partial: Path, pixel_key: str, n: int, image_size: int, *, masks: bool) -> np.memmap:
    build = {"pixel_key": pixel_key, "n": n, "image_size": int(image_size), "masks": masks}
    try:
        usable = json.loads((partial / BUILD_FILE).read_text()) == build and all(
            (partial / name).is_file() for name in (STATUS_FILE, HU_FILE, HAS_MASK_FILE, FAILURES_FILE)
        )
        status = np.load(partial / STATUS_FILE, mmap_mode="r+") if usable else None
    except (OSError, ValueError):
        usable, status = False, None
    if usable and status.shape == (n,):
        return status

    if partial.exists():
        logger.info("discarding an unfinished build made with other settings in %s", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    np.lib.format.open_memmap(partial / HU_FILE, mode="w+", dtype=np.int16, shape=(n, image_size, image_size))
    if masks:
        np.lib.format.open_memmap(partial / MASK_FILE, mode="w+", dtype=np.uint8, shape=(n, len(SUBTYPES), image_size, image_size))
    np.lib.format.open_memmap(partial / HAS_MASK_FILE, mode="w+", dtype=bool, shape=(n,))
    (partial / FAILURES_FILE).write_text("{}")
    np.lib.format.open_memmap(partial / STATUS_FILE, mode="w+", dtype=np.int8, shape=(n,))
    (partial / BUILD_FILE).write_text(json.dumps(build))  # written last: marks the folder usable
    return np.load(partial / STATUS_FILE, mmap_mode="r+")


def _finish(partial, cache_dir, table, failures, skipped, pixel_key, index_key, image_size, request) -> None:
    failed_rows = np.array(sorted(int(row) for row in failures), dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(table)), failed_rows)
    has_mask = np.load(partial / HAS_MASK_FILE)
    if len(failed_rows):
        logger.warning("%d of %d files failed to decode and are left out", len(failed_rows), len(table))
        for name in (HU_FILE, MASK_FILE):
            if (partial / name).is_file():
                _compact(partial / name, keep)

    index = table.iloc[keep].reset_index(drop=True)
    index["has_mask"] = has_mask[keep]
    index[list(INDEX_COLUMNS)].to_csv(partial / INDEX_FILE, index=False)
    decode_failures = pd.DataFrame(
        {"file": table["file"].astype(str).to_numpy()[failed_rows], "reason": [failures[str(row)] for row in failed_rows]}
    )
    upstream = skipped[["file", "reason"]].astype(str) if skipped is not None and len(skipped) else None
    all_skipped = pd.concat([upstream, decode_failures]) if upstream is not None else decode_failures
    all_skipped.to_csv(partial / SKIPPED_FILE, index=False)
    for name in (STATUS_FILE, FAILURES_FILE, HAS_MASK_FILE, BUILD_FILE):
        (partial / name).unlink()
    manifest = {
        "version": CACHE_VERSION,
        "image_size": int(image_size),
        "n_slices": len(index),
        "pixel_key": pixel_key,
        "index_key": index_key,
        "request": request,
    }
    (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

    # Two renames: the old folder is never half-replaced, and a crash between them leaves no
    # cache (rebuilt next time) rather than a mixed one.
    stale = cache_dir.with_name(cache_dir.name + f".stale-{os.getpid()}")
    if cache_dir.exists():
        os.replace(cache_dir, stale)
    os.replace(partial, cache_dir)
    if stale.exists():
        shutil.rmtree(stale, ignore_errors=True)
    logger.info("cache ready in %s: %d slices, %d skipped", cache_dir, len(index), len(all_skipped))


def _compact(path: Path, keep: np.ndarray, rows_per_copy: int = 256) -> None:
    source = np.load(path, mmap_mode="r")
    target_path = path.with_suffix(".compact.npy")
    target = np.lib.format.open_memmap(target_path, mode="w+", dtype=source.dtype, shape=(len(keep), *source.shape[1:]))
    for start in range(0, len(keep), rows_per_copy):
        target[start : start + rows_per_copy] = source[keep[start : start + rows_per_copy]]
    target.flush()
    del source, target
    os.replace(target_path, path)


def _rewrite_index(cache_dir: Path, table: pd.DataFrame, manifest: dict, index_key: str, request: dict) -> None:
    old = read_index(cache_dir / INDEX_FILE)
    new = table.set_index("image_id").loc[old["image_id"]].reset_index()
    new["has_mask"] = old["has_mask"].to_numpy()
    temporary = cache_dir / (INDEX_FILE + ".tmp")
    new[list(INDEX_COLUMNS)].to_csv(temporary, index=False)
    os.replace(temporary, cache_dir / INDEX_FILE)
    _write_atomic(cache_dir / MANIFEST_FILE, json.dumps({**manifest, "index_key": index_key, "request": request}, indent=2))


def _manifest(cache_dir: Path) -> dict:
    try:
        return json.loads((cache_dir / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _hash(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
