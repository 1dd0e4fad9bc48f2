"""The one entry point from a dataset folder to a ready ``SliceCache``.

``prepare_data(config)`` runs the data steps in order: generate the phantom dataset if it is
missing (generated source), scan the DICOM headers, order the slices, join the labels, take
the patient subset (RSNA source), split by patient and build the cache. A cache already
built for the same settings is returned at once, without scanning anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ichlab import rsna
from ichlab.cache import SliceCache, build_cache, open_if_current
from ichlab.splits import split_patients

logger = logging.getLogger(__name__)

SOURCES = ("generated", "rsna")


def data_request(data_config) -> dict:
    """Return the settings that decide a cache's content, as stored in its manifest.

    The dataset folder is left out, so a cache copied to another machine (where the RSNA
    download is absent) is still recognised and used.
    """
    request = {
        "source": data_config.source,
        "n_patients": int(data_config.n_patients),
        "seed": int(data_config.seed),
        "split_fractions": [float(value) for value in data_config.split_fractions],
        "image_size": int(data_config.image_size),
    }
    if data_config.source == "generated":
        from ichlab.phantom.plan import GENERATOR_VERSION

        # A new generator version changes the generated slices, so the cache must follow.
        request["generator_version"] = GENERATOR_VERSION
        request["phantom_size"] = int(data_config.phantom_size)
        request["slices_per_series"] = [int(value) for value in data_config.slices_per_series]
    return request


def prepare_data(config, *, progress: bool = True, num_workers: int | None = None) -> SliceCache:
    """Return the slice cache for ``config.data``, building whatever is missing.

    Parameters
    ----------
    config
        An ``ichlab.config.Config``. ``config.data.source`` is ``"generated"`` (the phantom
        dataset is generated into ``config.data.root`` if needed) or ``"rsna"``
        (``config.data.root`` contains the Kaggle download; a stratified subset of
        ``config.data.n_patients`` patients is cached).
    progress
        Show progress bars.
    num_workers
        Processes decoding DICOM for the cache; default ``config.data.num_workers``.

    Returns
    -------
    SliceCache
        The cache in ``config.data.cache_dir``, with splits from
        ``config.data.split_fractions`` and ``config.data.seed``.

    Raises
    ------
    FileNotFoundError
        If an RSNA folder is missing or not in the Kaggle layout; the message says where
        to get the data.
    ValueError
        For an unknown source.
    """
    data = config.data
    if data.source not in SOURCES:
        raise ValueError(f"config.data.source must be one of {', '.join(SOURCES)}, got {data.source!r}")
    root = Path(data.root).expanduser()
    cache_dir = Path(data.cache_dir).expanduser()
    request = data_request(data)
    cached = open_if_current(cache_dir, request)
    if cached is not None:
        logger.info("using the cache in %s (%d slices)", cache_dir, len(cached))
        return cached

    generated = data.source == "generated"
    if generated:
        _ensure_generated(data, root, progress)
    dicom_dir, labels_csv = rsna.find_layout(root)

    headers, scan_skipped = _scan(dicom_dir, cache_dir, progress)
    labels = rsna.read_labels(labels_csv)
    from ichlab.series import order_slices

    ordered = order_slices(headers)
    table, unlabelled = rsna.attach_labels(ordered, labels)
    if not generated:
        table = rsna.select_subset(table, data.n_patients, seed=data.seed)
    split = split_patients(table, tuple(data.split_fractions), seed=data.seed)
    table["split"] = table["patient_id"].map(split)

    skipped = pd.concat([scan_skipped[["file", "reason"]], unlabelled], ignore_index=True)
    mask_root = root if generated and (root / "masks").is_dir() else None
    workers = data.num_workers if num_workers is None else num_workers
    cache = build_cache(
        table,
        cache_dir,
        data.image_size,
        mask_root=mask_root,
        skipped=skipped,
        request=request,
        num_workers=workers,
        progress=progress,
    )
    _scan_file(cache_dir).unlink(missing_ok=True)
    logger.info("%s", rsna.format_slice_counts(cache.index))
    return cache


def _ensure_generated(data, root: Path, progress: bool) -> None:
    from ichlab.phantom import generate_dataset

    # generate_dataset returns at once when the folder contains a dataset with these settings.
    generate_dataset(
        root,
        data.n_patients,
        data.seed,
        image_size=data.phantom_size,
        slices_per_series=tuple(data.slices_per_series),
        progress=progress,
    )


def _scan_file(cache_dir: Path) -> Path:
    return cache_dir.with_name(cache_dir.name + ".scan.pkl")


def _scan(dicom_dir: Path, cache_dir: Path, progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan headers, keeping the result beside the cache until it is built.

    A full RSNA scan reads about 750,000 headers, so an interrupted cache build must not
    repeat it. The saved scan is reused while the folder contains the same number of files.
    """
    from ichlab.dicom import scan_headers

    n_files = sum(1 for entry in os.scandir(dicom_dir) if entry.is_file())
    key = {"dicom_dir": str(dicom_dir.resolve()), "n_files": n_files}
    saved_path = _scan_file(cache_dir)
    if saved_path.is_file():
        saved = pd.read_pickle(saved_path)
        if saved.get("key") == key:
            logger.info("reusing the header scan in %s", saved_path)
            return saved["headers"], saved["skipped"]

    scan = scan_headers(dicom_dir, progress=progress)
    if len(scan.skipped):
        logger.warning("%d file(s) in %s could not be read and are left out", len(scan.skipped), dicom_dir)
    saved_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = saved_path.with_name(saved_path.name + ".tmp")
    pd.to_pickle({"key": key, "headers": scan.headers, "skipped": scan.skipped}, temporary)
    os.replace(temporary, saved_path)
    return scan.headers, scan.skipped


def with_data_overrides(config, **changes):
    """Return a copy of ``config`` with some ``config.data`` fields replaced (CLI overrides).

    Changed settings get their own folders, named after them, so that the mode's folders,
    which the notebooks share, are never overwritten:

    - generated data with another number of patients or seed: ``<mode>-p<N>-seed<S>``, for
      the data and the cache;
    - an RSNA folder other than the mode's: a cache named ``<mode>-rsna-<digest of its path>``;
    - another image size: ``-<size>px`` added to the cache folder's name.

    A ``root`` or ``cache_dir`` passed here is kept as given. None values are ignored.
    """
    changes = {key: value for key, value in changes.items() if value is not None}
    mode_data = config.data
    data = replace(mode_data, **changes)
    cache_dir = Path(data.cache_dir)
    if data.source == "generated" and (data.n_patients, data.seed) != (mode_data.n_patients, mode_data.seed):
        name = f"{config.mode}-p{data.n_patients}-seed{data.seed}"
        if "root" not in changes:
            data.root = Path(data.root).with_name(name)
        cache_dir = cache_dir.with_name(name)
    elif data.source == "rsna" and Path(data.root) != Path(mode_data.root):
        digest = hashlib.sha1(str(Path(data.root).resolve()).encode()).hexdigest()[:8]
        cache_dir = cache_dir.with_name(f"{config.mode}-rsna-{digest}")
    if data.image_size != mode_data.image_size:
        cache_dir = cache_dir.with_name(f"{cache_dir.name}-{data.image_size}px")
    if "cache_dir" not in changes:
        data.cache_dir = cache_dir
    return replace(config, data=data)
