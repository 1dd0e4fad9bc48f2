"""DICOM to Hounsfield units (HU), with the fixes that real head-CT files need.

``load_hu`` reads one slice into a float32 HU image. It handles the files that break naive
pipelines: 12-bit unsigned files whose values wrap, unsigned storage with a negative
intercept, signed 12-bit values in 16-bit words, padding outside the field of view, missing
rescale tags, truncated pixel data, compressed transfer syntaxes and non-CT files.
``scan_headers`` (from ``ichlab.dicom_scan``) reads only the headers of a whole folder.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping
from os import PathLike
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import UID

logger = logging.getLogger(__name__)

__all__ = [
    "AIR_HU", "DECODER_PACKAGES", "DicomError", "EXTRA_HEADER_COLUMNS", "HEADER_COLUMNS",
    "HeaderScan", "check_ct_image", "check_is_dicom", "ct_slice_dataset", "interpret_stored_values", "load_hu", "read_dataset",
    "read_header_row", "read_rescale", "read_window_tags", "rescale_tags_missing",
    "scan_headers", "write_ct_slice",
]

AIR_HU = -1024.0

# Photometric interpretations of one-sample grayscale images. RGB, YBR and palette images
# are not CT slices.
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

# The pip package whose pydicom plugin decodes each compressed transfer syntax.
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",  # JPEG Extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",  # RLE Lossless
}


class DicomError(ValueError):
    """Error for a DICOM file that cannot become a HU image. The message names the file and the problem."""


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's per-file warnings and value validation while reading.

    RSNA files use ids such as ``ID_6431af929`` as UIDs, and stray files in a folder make
    pydicom guess a VR before failing. Either would log once per file over tens of thousands
    of files. A file that cannot be read still raises, and the caller reports it.
    """
    pydicom_logger = logging.getLogger("pydicom")
    drop_all = logging.Filter(name="\0")  # matches no logger name, so it drops every record
    pydicom_logger.addFilter(drop_all)
    try:
        with pydicom_config.disable_value_validation(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        pydicom_logger.removeFilter(drop_all)


def _label(path_or_dataset: str | PathLike | Dataset) -> str:
    if isinstance(path_or_dataset, Dataset):
        filename = getattr(path_or_dataset, "filename", None)
        return Path(filename).name if isinstance(filename, (str, PathLike)) else "<dataset>"
    return Path(path_or_dataset).name


# Groups every CT image has: identification, patient, acquisition, relationship, image pixel.
_STANDARD_GROUPS = frozenset({0x0008, 0x0010, 0x0018, 0x0020, 0x0028})


def read_dataset(path: str | PathLike, *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file with pydicom, raising ``DicomError`` that names the file on failure.

    ``force=True`` lets files without the 128-byte preamble (common in anonymised sets) be read.
    """
    path = Path(path)
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except FileNotFoundError:
        raise DicomError(f"{path}: file not found") from None
    except Exception as error:  # pydicom raises many types for damaged files
        raise DicomError(f"{path.name}: not a readable DICOM file ({type(error).__name__}: {error})") from error
    check_is_dicom(ds, path.name)
    return ds


def check_is_dicom(ds: Dataset, label: str) -> None:
    """Raise ``DicomError`` when a dataset read with ``force=True`` came from a non-DICOM file.

    With ``force=True`` pydicom parses any bytes as elements, so a text or random file reads
    as a dataset of nonsense tags. Such a file has neither the preamble nor a standard group.
    """
    if ds.preamble is None and not any(tag.group in _STANDARD_GROUPS for tag in ds.keys()):
        raise DicomError(f"{label}: not a DICOM file (no DICM preamble and no standard DICOM elements); leave it out of the folder")


def _number(value: object) -> float | None:
    """Return a header value as float: the first of a MultiValue, None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str):
        value = value.strip().strip("\x00")
        if not value:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_window_tags(ds: Dataset) -> tuple[float | None, float | None]:
    """Return the header's (WindowCenter, WindowWidth) as floats.

    A MultiValue gives its first value; zero-padded strings such as ``'00036'`` parse as
    numbers; an absent or empty element gives None. These values are for display only: the
    models always use the fixed windows in ``ichlab.windows.WINDOWS``.
    """
    with _quiet_pydicom():
        return _number(ds.get("WindowCenter")), _number(ds.get("WindowWidth"))


def rescale_tags_missing(ds: Dataset) -> bool:
    """Return True when RescaleSlope or RescaleIntercept is absent or empty."""
    with _quiet_pydicom():
        return _number(ds.get("RescaleSlope")) is None or _number(ds.get("RescaleIntercept")) is None


def read_rescale(ds: Dataset) -> tuple[float, float]:
    """Return (slope, intercept), using 1 and 0 for an absent or empty element."""
    with _quiet_pydicom():
        slope = _number(ds.get("RescaleSlope"))
        intercept = _number(ds.get("RescaleIntercept"))
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def check_ct_image(ds: Dataset | Mapping[str, object], label: str) -> None:
    """Raise ``DicomError`` unless ``ds`` (a dataset, or a mapping from keyword to value) is a
    single-frame grayscale CT image."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality != "CT":
        found = f"Modality {modality}" if modality else "no Modality element"
        raise DicomError(f"{label}: {found}; ichlab reads CT images only, so leave this file out")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if samples != 1 or photometric not in GRAYSCALE:
        raise DicomError(
            f"{label}: {samples} samples per pixel, PhotometricInterpretation {photometric}; "
            "a CT slice is one grayscale sample per pixel, so leave this file out"
        )
    frames = int(_number(ds.get("NumberOfFrames")) or 1)
    if frames != 1:
        raise DicomError(f"{label}: contains {frames} frames, but load_hu reads single-frame slices only; split the file into slices first")


def interpret_stored_values(values: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keep only the low ``bits_stored`` bits of stored pixel values, sign-extended if signed.

    Bits above HighBit may hold garbage (overlays, leftovers), so unsigned values are masked,
    and a signed 12-bit value reads the same whether its 16-bit word is 0x0FFF or 0xFFFF (-1).
    Assumes HighBit = BitsStored - 1, as in practically every CT file.

    Returns
    -------
    numpy.ndarray
        int32 of the same shape.
    """
    values = np.asarray(values)
    if bits_stored == 16:
        # Every bit is stored, so only the signedness can be wrong; astype wraps 16-bit words.
        return values.astype(np.int16 if signed else np.uint16, copy=False).astype(np.int32)

    words = values.astype(np.int32)  # two's complement, so masking also works on negative values
    words &= (1 << bits_stored) - 1
    if signed:
        sign_bit = 1 << (bits_stored - 1)
        words ^= sign_bit
        words -= sign_bit
    return words


def _check_pixel_bytes(ds: Dataset, label: str) -> None:
    if "PixelData" not in ds:
        raise DicomError(f"{label}: PixelData is missing, so the file contains no image")
    if _transfer_syntax(ds, label).is_compressed:
        return
    rows, columns = int(ds.Rows), int(ds.Columns)
    expected = rows * columns * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8
    found = len(ds.PixelData)
    if found < expected:
        raise DicomError(
            f"{label}: PixelData has {found} bytes, {expected} expected for {rows} x {columns} "
            f"at {int(ds.BitsAllocated)} bits; the file is truncated"
        )


# The uncompressed transfer syntax of each (implicit VR, little endian) encoding pydicom detects.
_NATIVE_SYNTAXES = {
    (True, True): pydicom.uid.ImplicitVRLittleEndian,
    (False, True): pydicom.uid.ExplicitVRLittleEndian,
    (False, False): pydicom.uid.ExplicitVRBigEndian,
}
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # first bytes of encapsulated (compressed) pixel data


def _transfer_syntax(ds: Dataset, label: str) -> UID:
    file_meta = getattr(ds, "file_meta", None)
    syntax = None if file_meta is None else file_meta.get("TransferSyntaxUID")
    if not syntax:
        # Some anonymised exports drop the file meta group. When pydicom read the file, it
        # detected the encoding, and uncompressed pixel data then decodes with that syntax.
        syntax = _NATIVE_SYNTAXES.get(tuple(getattr(ds, "original_encoding", (None, None))))
        if syntax is not None and "PixelData" in ds and bytes(ds.PixelData[:4]) != _ITEM_TAG:
            if file_meta is None:
                ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = syntax
            return UID(syntax)
        raise DicomError(
            f"{label}: TransferSyntaxUID is missing from the file meta information, so the pixel "
            "data cannot be decoded; set ds.file_meta.TransferSyntaxUID or rewrite the file with pydicom"
        )
    return UID(syntax)


def _decode(ds: Dataset, label: str) -> np.ndarray:
    syntax = _transfer_syntax(ds, label)
    try:
        return ds.pixel_array
    except Exception as error:  # decoder plugins raise RuntimeError, ValueError, OSError, ...
        package = DECODER_PACKAGES.get(str(syntax))
        text = str(error)
        # pydicom's message contains "missing dependencies" when no installed plugin can decode
        # the syntax. When plugins ran and failed, the pixel data itself is damaged.
        if package and "missing dependencies" in text:
            raise DicomError(
                f"{label}: no usable decoder for {syntax.name}; install it with `pip install {package}`"
            ) from error
        raise DicomError(f"{label}: pixel data could not be decoded ({syntax.name}): {text}") from error


def _padding_mask(ds: Dataset, stored: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray | None:
    padding = _number(ds.get("PixelPaddingValue"))
    if padding is None:
        return None
    low = int(interpret_stored_values(np.array([int(padding)]), bits_stored, signed)[0])
    limit = _number(ds.get("PixelPaddingRangeLimit"))
    if limit is None:
        return stored == low
    high = int(interpret_stored_values(np.array([int(limit)]), bits_stored, signed)[0])
    low, high = min(low, high), max(low, high)
    return (stored >= low) & (stored <= high)


def load_hu(
    path_or_dataset: str | PathLike | Dataset,
    *,
    pad_value: float = AIR_HU,
    warn_missing_rescale: bool = True,
) -> np.ndarray:
    """Read one CT slice into Hounsfield units.

    Parameters
    ----------
    path_or_dataset
        A DICOM file path or a pydicom ``Dataset`` read with its PixelData.
    pad_value
        HU given to pixels marked by PixelPaddingValue (outside the field of view).
    warn_missing_rescale
        Log a warning when RescaleSlope or RescaleIntercept is missing. A batch caller passes
        False and reports once: ``scan_headers`` already logs one warning per scan with the
        count, and its header table has a ``rescale_missing`` column.

    Returns
    -------
    numpy.ndarray
        float32 (H, W) HU image.

    Raises
    ------
    DicomError
        For an unreadable or non-CT file, truncated PixelData, a missing decoder (the message
        names the pip package) or pixel data that cannot be decoded.

    Notes
    -----
    The steps follow the DICOM pixel pipeline (modality LUT: HU = stored * slope + intercept,
    PS3.3 C.11.1) with these fixes, applied in this order:

    1. Stored values keep only their BitsStored low bits, sign-extended when
       PixelRepresentation is 1: bits above HighBit are garbage.
    2. Pixels equal to PixelPaddingValue (or within PixelPaddingRangeLimit) become
       ``pad_value``.
    3. Unsigned 12-bit files (BitsStored 12, PixelRepresentation 0) with RescaleIntercept
       above -100 hold HU + 1000 wrapped modulo 4096, as in part of the RSNA 2019 data. They
       are read as HU = slope * ((stored + 1000) mod 4096) - 1000, replacing the intercept;
       raw 3096 gives -1000, raw 40 gives 40, raw 4095 gives -1.
    4. Arithmetic runs in float32, so unsigned storage with a negative intercept never
       overflows or wraps (raw 0 with intercept -1024 gives -1024).
    5. A missing or empty slope or intercept reads as 1 or 0.
    """
    label = _label(path_or_dataset)
    ds = path_or_dataset if isinstance(path_or_dataset, Dataset) else read_dataset(path_or_dataset)

    with _quiet_pydicom():
        check_ct_image(ds, label)
        _check_pixel_bytes(ds, label)
        decoded = _decode(ds, label)
        bits_stored = int(ds.get("BitsStored") or ds.BitsAllocated)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        stored = interpret_stored_values(decoded, bits_stored, signed)  # (H, W) int32
        padding = _padding_mask(ds, stored, bits_stored, signed)
        missing = rescale_tags_missing(ds)
        slope, intercept = read_rescale(ds)

    if missing and warn_missing_rescale:
        logger.warning("%s: RescaleSlope or RescaleIntercept is missing; read as slope 1, intercept 0", label)

    if bits_stored == 12 and not signed and intercept > -100:
        stored = (stored + 1000) % 4096
        intercept = -1000.0

    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)  # (H, W)
    if padding is not None:
        hu[padding] = pad_value
    return hu


# The header scan lives in ichlab.dicom_scan and the writer in ichlab.dicom_write, which both
# import from this module. Their public names are part of this module's interface and are
# loaded on first access to avoid an import cycle.
_SCAN_NAMES = ("EXTRA_HEADER_COLUMNS", "HEADER_COLUMNS", "HeaderScan", "read_header_row", "scan_headers")
_WRITE_NAMES = ("ct_slice_dataset", "write_ct_slice")


def __getattr__(name: str):
    if name in _SCAN_NAMES:
        from ichlab import dicom_scan

        return getattr(dicom_scan, name)
    if name in _WRITE_NAMES:
        from ichlab import dicom_write

        return getattr(dicom_write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
