"""Run a trained model on a DICOM series folder it has never seen.

The folder's files are ordered along the slice normal (never by file name), converted to
HU, squared to the model's image size and windowed exactly as in training. Each slice gets
five subtype probabilities, and the most suspicious slice gets a Grad-CAM overlay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ichlab import SUBTYPES

logger = logging.getLogger(__name__)

# Printed by the command and written beside every output, because a model trained on the
# generated phantom has never seen a real hemorrhage.
PHANTOM_NOTICE = (
    "This model was trained on generated teaching data. Its probabilities say nothing "
    "clinical about this series and must not be used for diagnosis."
)


@dataclass
class SeriesPrediction:
    """The per-slice probabilities of one series and the files written for it."""

    table: pd.DataFrame  # one row per slice in spatial order
    csv_path: Path
    overlay_path: Path
    subtype: str  # the subtype the overlay explains
    slice_index: int  # the slice the overlay shows
    n_skipped: int  # files in the folder that could not be read


def read_series(folder: Path, image_size: int, *, pattern: str = "*.dcm") -> tuple[pd.DataFrame, np.ndarray, int]:
    """Read one series folder (files matching ``pattern``) into spatial order and model-sized HU slices.

    Returns
    -------
    (ordered, hu, n_skipped)
        The ordered header table, the HU slices (N, image_size, image_size) float32, and
        the number of files that were skipped as unreadable.

    Raises
    ------
    ValueError
        If the folder contains no readable DICOM slice, or slices of more than one series.
    """
    from ichlab import dicom, geometry, series

    folder = Path(folder)
    scan = dicom.scan_headers(folder, progress=False, pattern=pattern)
    for _, skipped in scan.skipped.iterrows():
        logger.warning("skipped %s: %s", skipped["file"], skipped["reason"])
    headers = scan.headers
    if headers.empty:
        raise ValueError(
            f"{folder}: no readable DICOM slice matches {pattern!r}; pass a folder that contains one series, "
            'and --pattern "*" when its files have no .dcm extension'
        )
    series_uids = sorted(headers["series_uid"].unique())
    if len(series_uids) > 1:
        raise ValueError(
            f"{folder}: contains {len(series_uids)} series ({', '.join(series_uids[:5])}"
            f"{', ...' if len(series_uids) > 5 else ''}); "
            "put each series in its own folder and run the command once per folder"
        )

    ordered = series.order_slices(headers).reset_index(drop=True)
    slices, unreadable = [], []
    for position, row in ordered.iterrows():
        try:
            hu = dicom.load_hu(row["file"])
        except dicom.DicomError as error:  # the header read, the pixel data did not
            logger.warning("skipped %s: %s", row["file"], error)
            unreadable.append(position)
            continue
        slices.append(geometry.to_square(hu, image_size, pixel_spacing=row["pixel_spacing"]))
    if not slices:
        raise ValueError(f"{folder}: no slice's pixel data could be decoded; the warnings above give each file's reason")
    ordered = ordered.drop(index=unreadable).reset_index(drop=True)
    ordered["slice_index"] = np.arange(len(ordered), dtype=np.int64)  # positions in the series read
    _warn_about_spacing(folder, series.series_report(ordered))
    hu_stack = np.stack(slices).astype(np.float32)  # (N, S, S)
    return ordered, hu_stack, len(scan.skipped) + len(unreadable)


def _warn_about_spacing(folder: Path, report: pd.DataFrame) -> None:
    """Log a warning when neighbouring slices are not evenly spaced, since windows assume they are."""
    for _, summary in report.iterrows():
        if summary["n_duplicates"] or summary["n_near_duplicates"]:
            logger.warning(
                "%s: %d duplicate and %d near-duplicate slice positions; the 2.5D and LSTM windows "
                "will treat them as neighbours", folder, summary["n_duplicates"], summary["n_near_duplicates"],
            )
        if summary["irregular_spacing"]:
            logger.warning(
                "%s: slice spacing varies from %.2f to %.2f mm (missing slices or mixed thickness); "
                "context windows span uneven distances", folder, summary["min_spacing_mm"], summary["max_spacing_mm"],
            )


def model_inputs(windows: np.ndarray, arch: str, context_slices: int) -> torch.Tensor:
    """Arrange windowed slices (N, 3, H, W) as the model input of every slice.

    Returns (N, 3, H, W) for 2D, (N, 9, H, W) for 2.5D and (N, K, 3, H, W) for the LSTM,
    with neighbours repeated at the ends of the series as in training.
    """
    from ichlab import series

    if arch not in ("2d", "2.5d", "lstm"):
        raise ValueError(f"arch {arch!r} is invalid; use 2d, 2.5d or lstm")
    if arch == "2d":
        return torch.from_numpy(windows)
    neighbours = series.neighbour_indices(len(windows), context_slices)  # (N, K)
    stacked = torch.from_numpy(windows[neighbours])  # (N, K, 3, H, W)
    if arch == "2.5d":
        return stacked.flatten(1, 2)  # (N, K*3, H, W)
    return stacked


def predict_series(
    series_dir: Path, run_dir: Path, *, arch: str = "lstm", subtype: str | None = None, out_dir: Path | None = None, batch_size: int = 16, pattern: str = "*.dcm"
) -> SeriesPrediction:
    """Predict every slice of a series with the ``arch`` model of a run folder.

    Parameters
    ----------
    series_dir
        A folder of DICOM files of one series, in any file-name order.
    run_dir
        A folder written by ``ichlab reproduce`` (or a folder holding ``<arch>/best.pt``).
    arch
        ``"2d"``, ``"2.5d"`` or ``"lstm"``.
    subtype
        The subtype to explain; default the one with the highest probability on any slice.
    out_dir
        Where the CSV and the overlay go (default: ``run_dir / "predict" /
        <series folder name>-<last 8 characters of the SeriesInstanceUID>``). Earlier outputs
        of the same ``arch`` in that folder are replaced.
    batch_size
        Slices per forward pass.
    pattern
        File name pattern of the slices; ``"*"`` for files without an extension.

    Returns
    -------
    SeriesPrediction
    """
    from ichlab import cam, cam_figures, training, windows

    if arch not in ("2d", "2.5d", "lstm"):
        raise ValueError(f"arch {arch!r} is invalid; use 2d, 2.5d or lstm")
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} is invalid; pass a positive number")
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / arch / "best.pt"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(
            f"{checkpoint_path}: no {arch} checkpoint; run `ichlab reproduce` first or pass the run folder it wrote"
        )
    if subtype is not None and subtype not in SUBTYPES:
        raise ValueError(f"subtype {subtype!r} is not one of {', '.join(SUBTYPES)}")
    checkpoint_config = training.load_checkpoint(checkpoint_path)["config"]
    image_size = int(checkpoint_config["data"]["image_size"])
    context_slices = int(checkpoint_config["data"]["context_slices"])
    model = training.load_model(checkpoint_path).eval()

    ordered, hu, n_skipped = read_series(Path(series_dir), image_size, pattern=pattern)
    windowed = windows.stack_windows(hu)  # (N, 3, S, S)
    inputs = model_inputs(windowed, arch, context_slices)

    with torch.no_grad():
        logits = torch.cat([model(inputs[start:start + batch_size]) for start in range(0, len(inputs), batch_size)])
    probabilities = torch.sigmoid(logits).numpy()  # (N, 5)

    table = pd.DataFrame(
        {
            "slice_index": np.arange(len(ordered)),
            "file": [Path(name).name for name in ordered["file"]],
            "sop_uid": ordered["sop_uid"],
            "slice_position_mm": ordered["slice_position_mm"].round(3),
        }
    )
    for column, name in enumerate(SUBTYPES):
        table[f"prob_{name}"] = probabilities[:, column]

    if subtype is None:
        subtype = SUBTYPES[int(probabilities.max(axis=0).argmax())]
    subtype_column = SUBTYPES.index(subtype)
    slice_index = int(probabilities[:, subtype_column].argmax())

    if out_dir is None:
        # The series UID's end keeps two series folders of the same name apart.
        series_uid = str(ordered["series_uid"].iloc[0])
        out_dir = run_dir / "predict" / f"{Path(series_dir).resolve().name}-{series_uid[-8:]}"
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file; pass a folder to --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Outputs of an earlier prediction in the same folder would mix with this one's.
    for stale in [*out_dir.glob(f"probabilities_{arch}.csv"), *out_dir.glob(f"gradcam_{arch}_*.png")]:
        stale.unlink()
    csv_path = out_dir / f"probabilities_{arch}.csv"
    table.to_csv(csv_path, index=False)
    (out_dir / "NOTICE.txt").write_text(PHANTOM_NOTICE + "\n")

    result = cam.compute_cams(model, inputs[slice_index:slice_index + 1], [subtype])
    overlay_path = out_dir / f"gradcam_{arch}_{subtype}_slice{slice_index:03d}.png"
    cam_figures.save_overlay(
        hu[slice_index],
        result.maps[0],
        overlay_path,
        title=(
            f"{Path(series_dir).name}, slice {slice_index}: {arch} Grad-CAM for {subtype} "
            f"(p = {probabilities[slice_index, subtype_column]:.2f})\nnot for clinical use"
        ),
    )
    return SeriesPrediction(table, csv_path, overlay_path, subtype, slice_index, n_skipped)
