"""Header scan: read only the headers of every DICOM file in a folder, in parallel, into a table.

The table (``HeaderScan.headers``) is what slice ordering, subset selection and caching start
from; files that cannot be used are listed with the reason in ``HeaderScan.skipped``. The
public names are re-exported by ``ichlab.dicom``.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import pandas as pd
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from tqdm.auto import tqdm

from ichlab.dicom import DicomError, _number, _quiet_pydicom, check_ct_image, check_is_dicom

logger = logging.getLogger("ichlab.dicom")

# Columns of the header table, in order; ``rescale_missing``, ``instance_number`` and
# ``transfer_syntax`` follow them.
HEADER_COLUMNS = (
    "file", "image_id", "patient_id", "study_uid", "series_uid", "sop_uid", "position",
    "orientation", "pixel_spacing", "slice_thickness", "rows", "columns", "intercept", "slope",
    "bits_stored", "pixel_representation", "modality",
)
EXTRA_HEADER_COLUMNS = ("rescale_missing", "instance_number", "transfer_syntax")
# Elements read by the header scan; the parser skips converting every other element.
HEADER_KEYWORDS = (
    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows",
    "Columns", "RescaleIntercept", "RescaleSlope", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "Modality", "SamplesPerPixel", "PhotometricInterpretation",
    "NumberOfFrames",
)
_HEADER_TAGS = {tag_for_keyword(keyword): keyword for keyword in HEADER_KEYWORDS}
_HEADER_TAG_LIST = [pydicom.tag.Tag(tag) for tag in _HEADER_TAGS]
# Below this many files a scan runs in the calling process: starting workers costs more.
PARALLEL_MIN_FILES = 128
_CHUNK_FILES = 64


@dataclass
class HeaderScan:
    """The result of ``scan_headers``.

    Attributes
    ----------
    headers
        One row per readable CT file, columns ``HEADER_COLUMNS`` then ``EXTRA_HEADER_COLUMNS``.
    skipped
        One row per file left out, columns ``file`` and ``reason``.
    """

    headers: pd.DataFrame
    skipped: pd.DataFrame

    @property
    def n_missing_rescale(self) -> int:
        """Number of readable files without RescaleSlope or RescaleIntercept."""
        return int(self.headers["rescale_missing"].sum()) if len(self.headers) else 0


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        numbers = tuple(float(item) for item in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _pixel_bytes_after(path: Path, ds: Dataset, pixel_offset: int) -> int | None:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or UID(syntax).is_compressed:
        return None
    element_header = 8 if UID(syntax).is_implicit_VR else 12
    return path.stat().st_size - pixel_offset - element_header


def _raw_value(element: RawDataElement, little_endian: bool) -> object:
    # Only the VRs of HEADER_KEYWORDS: US and SS numbers, everything else ASCII text.
    value = element.value
    if not value:
        return None
    vr = element.VR or dictionary_VR(element.tag)
    if vr in ("US", "SS"):
        code = "H" if vr == "US" else "h"
        numbers = struct.unpack(f"{'<' if little_endian else '>'}{len(value) // 2}{code}", value)
        return numbers[0] if len(numbers) == 1 else list(numbers)
    parts = [part.strip() for part in value.decode("latin-1").strip("\x00 ").split("\\")]
    return parts[0] if len(parts) == 1 else parts


def _header_values(ds: Dataset) -> dict[str, object]:
    # pydicom's general value conversion took most of a header read's time in
    # benchmarks/dicom_io.py, so the raw bytes of these few elements are decoded directly.
    # Numbers stay text here and are parsed by the caller.
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None:
        little_endian = UID(syntax).is_little_endian
    else:  # no file meta: the byte order pydicom detected while reading, little endian if unknown
        little_endian = getattr(ds, "original_encoding", (None, None))[1] is not False
    header: dict[str, object] = dict.fromkeys(HEADER_KEYWORDS)
    for tag, keyword in _HEADER_TAGS.items():
        element = ds.get_item(tag)  # raw, not converted
        if element is None:
            continue
        if isinstance(element, RawDataElement):
            header[keyword] = _raw_value(element, little_endian)
        else:
            header[keyword] = element.value
    return header


def read_header_row(path: str | PathLike) -> dict:
    """Read one file's header (no pixel data) into a header-table row.

    Raises
    ------
    DicomError
        For an unreadable or non-CT file, a missing element needed for ordering, or pixel
        data shorter than Rows x Columns needs.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle, _quiet_pydicom():
            ds = pydicom.dcmread(handle, stop_before_pixels=True, force=True, specific_tags=_HEADER_TAG_LIST)
            pixel_offset = handle.tell()
            header = _header_values(ds)
    except Exception as error:  # pydicom raises many types for damaged files
        raise DicomError(f"{path.name}: not a readable DICOM file ({type(error).__name__}: {error})") from error

    check_is_dicom(ds, path.name)
    check_ct_image(header, path.name)
    for keyword in ("SeriesInstanceUID", "Rows", "Columns", "BitsAllocated"):
        if header[keyword] in (None, ""):
            raise DicomError(f"{path.name}: {keyword} is missing")
    position = _floats(header["ImagePositionPatient"], 3)
    orientation = _floats(header["ImageOrientationPatient"], 6)
    if position is None or orientation is None:
        missing = "ImagePositionPatient" if position is None else "ImageOrientationPatient"
        raise DicomError(f"{path.name}: {missing} is missing or invalid; the slice cannot be ordered")

    rows, columns, bits_allocated = int(header["Rows"]), int(header["Columns"]), int(header["BitsAllocated"])
    expected = rows * columns * bits_allocated // 8
    available = _pixel_bytes_after(path, ds, pixel_offset)
    if available is not None and available < expected:
        raise DicomError(
            f"{path.name}: PixelData has at most {max(available, 0)} bytes, {expected} expected; "
            "the file is truncated"
        )

    slope = _number(header["RescaleSlope"])
    intercept = _number(header["RescaleIntercept"])
    thickness = _number(header["SliceThickness"])
    instance = _number(header["InstanceNumber"])
    return {
        "file": str(path),
        "image_id": path.stem,
        "patient_id": str(header["PatientID"] or ""),
        "study_uid": str(header["StudyInstanceUID"] or ""),
        "series_uid": str(header["SeriesInstanceUID"]),
        "sop_uid": str(header["SOPInstanceUID"] or ""),
        "position": position,
        "orientation": orientation,
        "pixel_spacing": _floats(header["PixelSpacing"], 2),
        "slice_thickness": float("nan") if thickness is None else thickness,
        "rows": rows,
        "columns": columns,
        "intercept": 0.0 if intercept is None else intercept,
        "slope": 1.0 if slope is None else slope,
        "bits_stored": int(header["BitsStored"] or bits_allocated),
        "pixel_representation": int(header["PixelRepresentation"] or 0),
        "modality": str(header["Modality"]),
        "rescale_missing": slope is None or intercept is None,
        "instance_number": None if instance is None else int(instance),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
    }


def _scan_files(paths: list[str]) -> list[tuple[str, dict | None, str | None]]:
    results = []
    for path in paths:
        try:
            results.append((path, read_header_row(path), None))
        except DicomError as error:
            results.append((path, None, str(error)))
        except OSError as error:
            results.append((path, None, f"{Path(path).name}: {error.strerror or error}"))
    return results


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def scan_headers(
    folder: str | PathLike,
    *,
    workers: int | None = None,
    progress: bool = True,
    pattern: str = "*.dcm",
) -> HeaderScan:
    """Read the headers of every DICOM file under a folder, without pixel data.

    Parameters
    ----------
    folder
        Searched recursively.
    workers
        Worker processes; None uses up to 8, limited by the CPU count. Scans of fewer than
        ``PARALLEL_MIN_FILES`` files, or ``workers=1``, run in the calling process.
    progress
        Show a tqdm progress bar.
    pattern
        File name pattern; pass ``"*"`` for files without the .dcm extension.

    Returns
    -------
    HeaderScan
        ``headers`` sorted by file path, and ``skipped`` with the reason for each file left
        out (unreadable, not CT, truncated, or missing an element needed for ordering).

    Raises
    ------
    NotADirectoryError
        If ``folder`` is not a directory.

    Notes
    -----
    One bad file never stops the scan. Files without rescale tags are counted and reported
    in a single warning per scan, not one per file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: directory not found; pass the folder that contains the DICOM files")
    paths = sorted(str(path) for path in folder.rglob(pattern) if path.is_file())
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)

    results: list[tuple[str, dict | None, str | None]] = []
    with tqdm(total=len(paths), desc="DICOM headers", unit="file", disable=not progress) as bar:
        if workers <= 1 or len(paths) < PARALLEL_MIN_FILES:
            for chunk in _chunks(paths, _CHUNK_FILES):
                results.extend(_scan_files(chunk))
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_scan_files, chunk) for chunk in _chunks(paths, _CHUNK_FILES)]
                for future in as_completed(futures):
                    chunk_results = future.result()
                    results.extend(chunk_results)
                    bar.update(len(chunk_results))
    results.sort(key=lambda result: result[0])

    rows = [row for _, row, _ in results if row is not None]
    headers = pd.DataFrame(rows, columns=list(HEADER_COLUMNS + EXTRA_HEADER_COLUMNS))
    skipped = pd.DataFrame(
        [(path, reason) for path, row, reason in results if row is None], columns=["file", "reason"]
    )
    scan = HeaderScan(headers=headers, skipped=skipped)

    if scan.n_missing_rescale:
        logger.warning(
            "%d of %d files in %s lack RescaleSlope or RescaleIntercept; they are read as slope 1, intercept 0",
            scan.n_missing_rescale, len(headers), folder,
        )
    if len(skipped):
        logger.warning("skipped %d of %d files in %s; see HeaderScan.skipped for the reasons", len(skipped), len(paths), folder)
    return scan
