"""A preprocessing cache of decoded slices: int16 HU in a memory-mapped file, plus an index.

DICOM decoding and resizing happen once; training then reads fixed-size int16 HU slices
from ``hu.npy`` and windows them per item or per batch, so windows can change without
re-reading DICOM. :func:`build_cache` works in chunks, can be interrupted and resumed, and
replaces the finished cache folder only when it is complete. ``SliceCache.open(path)``
reads a finished cache.

Folder layout: ``manifest.json`` (settings and keys), ``hu.npy`` (N, S, S) int16, optional
``masks.npy`` (N, 5, S, S) uint8, ``index.csv`` (one row per slice, in array order) and
``skipped.csv`` (``file`` and ``reason`` for every file left out).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ichlab import LABEL_COLUMNS, SUBTYPES
from ichlab.splits import SPLITS

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MANIFEST_FILE = "manifest.json"
HU_FILE = "hu.npy"
MASK_FILE = "masks.npy"
INDEX_FILE = "index.csv"
SKIPPED_FILE = "skipped.csv"
# Files that exist only in the ``<cache>.partial`` folder of an unfinished build.
BUILD_FILE = "build.json"
STATUS_FILE = "status.npy"
FAILURES_FILE = "failures.json"
HAS_MASK_FILE = "has_mask.npy"

INDEX_COLUMNS = ("image_id", "patient_id", "series_uid", "slice_index", "split", *LABEL_COLUMNS, "has_mask")
_TEXT_COLUMNS = ("image_id", "patient_id", "series_uid", "split")


class CacheError(FileNotFoundError):
    """Raised for a folder without a finished cache. The message says how to build or resume it."""


class SliceCache:
    """A finished cache opened read-only; arrays are memory-mapped, not loaded.

    Attributes
    ----------
    path : Path
        The cache folder.
    index : pandas.DataFrame
        One row per cached slice in array order: ``image_id``, ``patient_id``, ``series_uid``,
        ``slice_index``, ``split``, the five subtypes and ``any`` (int64), ``has_mask`` (bool).
        Rows of one series are contiguous and in slice order.
    skipped : pandas.DataFrame
        ``file`` and ``reason`` for each file left out of the cache.
    settings : dict
        The manifest: ``image_size``, the build keys and the caller's settings.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.is_file():
            partial = _partial_dir(self.path)
            hint = f"; an unfinished build is in {partial}: run the build again to resume it" if partial.is_dir() else ""
            raise CacheError(f"no finished cache in {self.path} ({MANIFEST_FILE} is missing){hint}")
        rebuild = f"delete the folder {self.path} and run `ichlab prepare` (or build_cache) again"
        reading = manifest_path
        try:
            self.settings = json.loads(manifest_path.read_text())
            if self.settings.get("version") != CACHE_VERSION:
                raise CacheError(f"{self.path} contains cache version {self.settings.get('version')}, expected {CACHE_VERSION}; {rebuild}")
            reading = self.path / INDEX_FILE
            self.index = read_index(reading)
            reading = self.path / SKIPPED_FILE
            self.skipped = pd.read_csv(reading, dtype=str, keep_default_na=False)
            size = int(self.settings["image_size"])
            reading = self.path / HU_FILE
            self._hu = _open_array(reading, (len(self.index), size, size), np.int16)
            reading = self.path / MASK_FILE
            self._masks = _open_array(reading, (len(self.index), len(SUBTYPES), size, size), np.uint8) if reading.is_file() else None
        except CacheError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise CacheError(f"{reading} is damaged or missing ({type(error).__name__}: {error}); {rebuild}") from error
        self._series_start, self._series_length = _series_runs(self.index["series_uid"].to_numpy())

    @classmethod
    def open(cls, path: str | Path) -> SliceCache:
        """Open the finished cache in ``path``; raise :class:`CacheError` if there is none."""
        return cls(path)

    @property
    def image_size(self) -> int:
        """Side of every cached slice in pixels."""
        return int(self.settings["image_size"])

    @property
    def hu(self) -> np.ndarray:
        """(N, S, S) int16 HU, memory-mapped read-only."""
        return self._hu

    @property
    def masks(self) -> np.ndarray | None:
        """(N, 5, S, S) uint8 lesion masks (1 inside), memory-mapped; None without masks."""
        return self._masks

    @property
    def labels(self) -> np.ndarray:
        """(N, 5) float32 subtype labels in RSNA order."""
        return self.index[list(SUBTYPES)].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        counts = self.index["split"].value_counts().reindex(SPLITS, fill_value=0)
        splits = ", ".join(f"{name} {counts[name]}" for name in SPLITS)
        return f"SliceCache({len(self)} slices of {self.image_size} px: {splits}; {len(self.skipped)} skipped)"

    # Pickling sends only the path, so DataLoader workers started with spawn reopen the memory
    # maps instead of receiving a copy of the arrays.
    def __getstate__(self) -> dict:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def rows(self, split: str | None = None) -> np.ndarray:
        """Return the int64 row numbers of one split (``None``: every row), in cache order."""
        if split is None:
            return np.arange(len(self), dtype=np.int64)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)} or None, got {split!r}")
        return np.flatnonzero(self.index["split"].to_numpy() == split).astype(np.int64)

    def neighbour_rows(self, k: int) -> np.ndarray:
        """Return (N, k) int64 rows of the k slices centred on each row, clipped to its series."""
        from ichlab.series import neighbour_indices

        table = np.empty((len(self), k), dtype=np.int64)
        for start, length in zip(*np.unique(np.c_[self._series_start, self._series_length], axis=0).T):
            table[start : start + length] = start + neighbour_indices(int(length), k)
        return table

    def series_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (N,) int64 arrays: the first row of each row's series, and the series length."""
        return self._series_start, self._series_length

    def summary(self) -> pd.DataFrame:
        """Return patients, series, slices and positive slices per subtype for each split."""
        groups = self.index.groupby("split")
        table = pd.DataFrame(
            {
                "patients": groups["patient_id"].nunique(),
                "series": groups["series_uid"].nunique(),
                "slices": groups.size(),
            }
        )
        table = table.join(groups[list(LABEL_COLUMNS)].sum())
        return table.reindex([name for name in SPLITS if name in table.index])


def read_index(path: Path) -> pd.DataFrame:
    """Read an ``index.csv`` with the column types of the cache index."""
    dtypes = {column: str for column in _TEXT_COLUMNS}
    index = pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    for column in ("slice_index", *LABEL_COLUMNS):
        index[column] = index[column].astype("int64")
    index["has_mask"] = index["has_mask"].astype(str).str.lower().eq("true")
    return index[list(INDEX_COLUMNS)]


def _open_array(path: Path, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Memory-map a cache array read-only and check its shape and type against the index."""
    array = np.load(path, mmap_mode="r")
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(f"expected {np.dtype(dtype).name} {shape}, found {array.dtype.name} {array.shape}")
    return array


def _series_runs(series_uids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(series_uids)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts_here = np.r_[True, series_uids[1:] != series_uids[:-1]]
    run_starts = np.flatnonzero(starts_here)
    run_lengths = np.diff(np.r_[run_starts, n])
    run_of_row = np.cumsum(starts_here) - 1
    return run_starts[run_of_row].astype(np.int64), run_lengths[run_of_row].astype(np.int64)


def _partial_dir(cache_dir: Path) -> Path:
    return cache_dir.with_name(cache_dir.name + ".partial")


def open_if_current(cache_dir: str | Path, request: dict) -> SliceCache | None:
    """Return the finished cache in ``cache_dir`` if it was built for ``request``, else None."""
    try:
        cache = SliceCache.open(cache_dir)
    except CacheError:
        return None
    return cache if cache.settings.get("request") == _plain(request) else None


def _plain(value):
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def __getattr__(name: str):
    # ``build_cache`` lives in ichlab.cache_build, which imports this module; loading it on
    # first use keeps ``from ichlab.cache import build_cache`` working without an import cycle.
    if name == "build_cache":
        from ichlab.cache_build import build_cache

        return build_cache
    raise AttributeError(f"module 'ichlab.cache' has no attribute {name!r}")
