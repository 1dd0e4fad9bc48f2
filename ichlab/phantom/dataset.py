"""Write and read a generated dataset folder in the RSNA layout.

The folder contains ``stage_2_train/ID_<hex>.dcm`` (one file per slice, names in no order),
``stage_2_train.csv`` (``ID,Label`` rows ``ID_<image>_<subtype>``), ``masks/<series uid>.npz``
(``image_ids`` (N,) and ``masks`` (N, 5, H, W) uint8 per series) and ``phantom.json``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ichlab import SUBTYPES
from ichlab.phantom.plan import (
    DEFAULT_LABEL_MIN_AREA_MM2,
    DEFAULT_MIN_POSITIVE_PATIENTS,
    PhantomSettings,
    SeriesPlan,
    check_settings,
    plan_dataset,
    validate_prevalence,
)
from ichlab.phantom.quirks import resolve_quirks
from ichlab.phantom.render import render_series
from ichlab.phantom.writer import label_rows, write_series

logger = logging.getLogger(__name__)

IMAGE_FOLDER = "stage_2_train"
LABEL_FILE = "stage_2_train.csv"
MASK_FOLDER = "masks"
SETTINGS_FILE = "phantom.json"
NOTICE = "Generated teaching phantom: results on it say nothing about clinical performance."


def generate_dataset(
    out_dir: str | Path,
    n_patients: int,
    seed: int = 0,
    *,
    image_size: int = 512,
    slices_per_series: tuple[int, int] = (20, 40),
    prevalence: Mapping[str, float] | None = None,
    difficulty: str = "default",
    quirks: Any = None,
    progress: bool = True,
    min_positive_patients: int = DEFAULT_MIN_POSITIVE_PATIENTS,
    label_min_area_mm2: float = DEFAULT_LABEL_MIN_AREA_MM2,
    workers: int = 1,
) -> Path:
    """Generate a head-CT dataset folder in the RSNA layout, or reuse a complete one.

    Parameters
    ----------
    out_dir
        Folder to create. The files are written into a temporary sibling folder that is
        renamed at the end, so an interrupted run leaves no half-written dataset behind.
    n_patients
        Number of patients; each has one axial series of 5 mm slices.
    seed
        The same arguments give identical pixel data, labels and file names.
    image_size
        Rows and columns of a slice, in pixels, for series without a size quirk.
    slices_per_series
        Inclusive (min, max) number of slices per series.
    prevalence
        Share of patients with each subtype, by subtype name; missing names keep the
        defaults of ``ichlab.phantom.plan.DEFAULT_PREVALENCE``.
    difficulty
        ``"easy"``, ``"default"`` or ``"hard"``: lesion size, blood contrast and noise.
    quirks
        Header quirks of real RSNA files; see ``ichlab.phantom.quirks.resolve_quirks``.
        None (the default) writes clean files.
    progress
        Show a progress bar over the series.
    min_positive_patients
        Every subtype is given to at least this many patients (capped at ``n_patients``).
    label_min_area_mm2
        A slice is labelled with a subtype when that lesion covers at least this area on it.
    workers
        Processes that render and write series in parallel; the files do not depend on it.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        For an invalid setting.
    FileExistsError
        If ``out_dir`` is a non-empty folder that is not a dataset generated with these
        settings. A dataset written by another generator version is regenerated.
    """
    settings = PhantomSettings(
        n_patients=int(n_patients),
        seed=int(seed),
        image_size=int(image_size),
        slices_per_series=(int(slices_per_series[0]), int(slices_per_series[1])),
        prevalence=validate_prevalence(prevalence),
        difficulty=difficulty,
        quirks=resolve_quirks(quirks),
        min_positive_patients=int(min_positive_patients),
        label_min_area_mm2=float(label_min_area_mm2),
    )
    check_settings(settings)
    if workers < 1:
        raise ValueError(f"workers={workers}; use at least one process")
    out = Path(out_dir)
    if _is_complete(out, settings):
        logger.info("reusing the generated dataset in %s (same settings)", out)
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write_dataset(partial, settings, progress, workers)
        try:
            _replace_folder(partial, out)
        except OSError:
            # Another process may have finished the same dataset first.
            if not _is_complete(out, settings):
                raise
            logger.info("another process generated %s first; keeping its copy", out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("generated %d patients in %s", settings.n_patients, out)
    return out


def _is_complete(out: Path, settings: PhantomSettings) -> bool:
    # Return True when ``out`` contains this dataset and False when ``out`` may be written.
    # Raise for a folder that must not be overwritten.
    if not out.exists():
        return False
    settings_path = out / SETTINGS_FILE
    if settings_path.is_file():
        stored = json.loads(settings_path.read_text()).get("settings") or {}
        expected = settings.to_dict()
        if stored == expected:
            return True
        if stored.get("generator_version") != expected["generator_version"]:
            # An older generator's defaults may differ too, so its whole dataset is outdated.
            logger.warning("%s was written by generator version %s; regenerating it with version %s", out, stored.get("generator_version"), expected["generator_version"])
            return False
        differences = sorted(key for key in expected if stored.get(key) != expected[key])
        raise FileExistsError(
            f"{out} contains a dataset generated with other settings (different: {', '.join(differences)}); "
            "delete the folder or choose another out_dir"
        )
    if out.is_dir() and not any(out.iterdir()):
        return False
    raise FileExistsError(f"{out} exists and is not a generated dataset (no {SETTINGS_FILE}); delete it or choose another out_dir")


def _replace_folder(partial: Path, out: Path) -> None:
    # Swap the finished folder in. An outdated dataset is moved aside first and deleted after
    # the rename, so ``out`` is never a mix of the two.
    outdated = out.parent / f".{out.name}.outdated-{os.getpid()}"
    if out.is_dir() and any(out.iterdir()):
        out.rename(outdated)
    elif out.is_dir():
        out.rmdir()
    partial.rename(out)
    shutil.rmtree(outdated, ignore_errors=True)


def _generate_series(series: SeriesPlan, folder: Path, settings: PhantomSettings) -> np.ndarray:
    rendered = render_series(series, settings.difficulty)
    return write_series(series, rendered, folder, settings.label_min_area_mm2)  # (N, 5)


def _write_dataset(folder: Path, settings: PhantomSettings, progress: bool, workers: int) -> None:
    (folder / IMAGE_FOLDER).mkdir(parents=True)
    (folder / MASK_FOLDER).mkdir()
    plan = plan_dataset(settings)

    if workers > 1:
        # Spawned workers, because forking a process that runs torch's thread pools can hang.
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        results = executor.map(_generate_series, plan.series, repeat(folder), repeat(settings))
    else:
        executor = None
        results = (_generate_series(series, folder, settings) for series in plan.series)

    rows_by_image: dict[str, list[str]] = {}
    slices_positive = np.zeros(len(SUBTYPES), dtype=np.int64)
    patients_positive = np.zeros(len(SUBTYPES), dtype=np.int64)
    try:
        progress_bar = tqdm(zip(plan.series, results), total=len(plan.series), desc="generating series", unit="series", disable=not progress)
        for series, labels in progress_bar:
            for image_id, image_labels in zip(series.image_ids, labels):
                rows_by_image[image_id] = label_rows(image_id, image_labels)
            slices_positive += labels.sum(axis=0)
            patients_positive += labels.any(axis=0)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    # Label rows in a random image order, as in the RSNA file; duplicated images repeat their rows.
    order = np.random.default_rng([settings.seed, 5]).permutation(sorted(rows_by_image))
    duplicates = set(plan.duplicate_label_images)
    lines = ["ID,Label"]
    for image_id in order:
        lines.extend(rows_by_image[image_id])
        if image_id in duplicates:
            lines.extend(rows_by_image[image_id])
    (folder / LABEL_FILE).write_text("\n".join(lines) + "\n")

    summary = {
        "n_images": len(rows_by_image),
        "positive_slices": dict(zip(SUBTYPES, slices_positive.tolist())),
        "positive_patients": dict(zip(SUBTYPES, patients_positive.tolist())),
    }
    record = {"notice": NOTICE, "settings": settings.to_dict(), "summary": summary, "quirk_images": plan.quirk_images}
    (folder / SETTINGS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_settings(root: str | Path) -> dict[str, Any]:
    """Return the contents of ``root/phantom.json``: notice, settings, summary and quirk_images."""
    path = Path(root) / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {root} is not a dataset written by ichlab.phantom.generate_dataset")
    return json.loads(path.read_text())


def load_masks(root: str | Path, image_ids: Iterable[str], *, strict: bool = True) -> dict[str, np.ndarray]:
    """Read the lesion masks of the given images from a generated dataset.

    Parameters
    ----------
    root
        Dataset folder written by :func:`generate_dataset`.
    image_ids
        Image ids such as ``"ID_0a1b2c3d4"`` (file stems).
    strict
        Raise for ids without a mask; when False they are left out of the result.

    Returns
    -------
    dict[str, np.ndarray]
        Image id -> (5, H, W) bool mask in ``ichlab.SUBTYPES`` order, on the DICOM pixel grid.

    Raises
    ------
    FileNotFoundError
        If ``root/masks`` does not exist.
    KeyError
        If ``strict`` and an image id has no mask.
    """
    folder = Path(root) / MASK_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found; lesion masks exist only for datasets written by ichlab.phantom.generate_dataset")
    wanted = set(image_ids)
    masks: dict[str, np.ndarray] = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            series_ids = [str(image_id) for image_id in data["image_ids"]]
            rows = [row for row, image_id in enumerate(series_ids) if image_id in wanted]
            if not rows:
                continue
            series_masks = data["masks"]  # (N, 5, H, W) uint8
            for row in rows:
                masks[series_ids[row]] = series_masks[row].astype(bool)

    missing = sorted(wanted - set(masks))
    if missing and strict:
        raise KeyError(f"no lesion mask for {len(missing)} image ids in {folder}, for example {', '.join(missing[:3])}")
    return masks
