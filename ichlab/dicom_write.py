"""Writing CT slices as DICOM files with pydicom, for demonstrations and tests.

The course's notebooks and tests build every header quirk they discuss with these two
functions: wrapped 12-bit values, missing rescale tags, padding values and big-endian files.
Both are also available as ``ichlab.dicom.ct_slice_dataset`` and ``ichlab.dicom.write_ct_slice``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ichlab.dicom import _quiet_pydicom


def ct_slice_dataset(
    stored: np.ndarray,
    *,
    bits_stored: int = 16,
    signed: bool = True,
    intercept: float | None = -1024.0,
    slope: float | None = 1.0,
    modality: str = "CT",
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    pixel_spacing: tuple[float, float] = (0.5, 0.5),
    slice_thickness: float = 5.0,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    padding_value: int | None = None,
    little_endian: bool = True,
) -> Dataset:
    """Build one CT slice as a pydicom ``Dataset`` with file meta, for demonstrations and tests.

    ``stored`` becomes 16-bit words exactly as given (values wrap to 16 bits), so any header
    quirk can be reproduced: pass ``intercept=None`` or ``slope=None`` to leave that element
    out. UIDs that are not valid, such as RSNA's ``ID_...`` ids, are kept as given.
    :func:`write_ct_slice` writes the same dataset to a file.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

    words = np.atleast_2d(np.asarray(stored, dtype=np.int64)) & 0xFFFF  # (H, W)
    with _quiet_pydicom():
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid or generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = CTImageStorage
        ds.Modality = modality
        ds.PatientID = "ID_demo"
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SeriesInstanceUID = series_uid or "1.2.826.0.1.3680043.8.498.2"
        ds.ImagePositionPatient = [float(value) for value in position]
        ds.ImageOrientationPatient = [float(value) for value in orientation]
        ds.PixelSpacing = [float(value) for value in pixel_spacing]
        ds.SliceThickness = slice_thickness
        ds.Rows, ds.Columns = words.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if intercept is not None:
            ds.RescaleIntercept = intercept
        if slope is not None:
            ds.RescaleSlope = slope
        if padding_value is not None:
            ds.add_new(0x00280120, "SS" if signed else "US", int(padding_value))  # PixelPaddingValue
        ds.PixelData = words.astype("<u2" if little_endian else ">u2").tobytes()
    return ds


def write_ct_slice(path: str | PathLike, stored: np.ndarray, **options) -> Path:
    """Write one CT slice as a DICOM file with pydicom, for demonstrations and tests.

    ``options`` are those of :func:`ct_slice_dataset`, which builds the dataset.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    ds = ct_slice_dataset(stored, **options)
    little_endian = options.get("little_endian", True)
    with _quiet_pydicom():
        ds.save_as(path, enforce_file_format=True, little_endian=little_endian, implicit_vr=False)
    return Path(path)
