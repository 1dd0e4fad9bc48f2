"""Write a rendered series as CT Image Storage DICOM files, its masks and its label rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from ichlab import LABEL_COLUMNS
from ichlab.phantom.plan import SeriesPlan
from ichlab.phantom.quirks import ENCODINGS, encode_pixels, truncate_file
from ichlab.phantom.render import RenderedSeries, slice_heights, slice_labels

MANUFACTURER = "ichlab phantom"
STUDY_DESCRIPTION = "Generated head CT (teaching phantom, not patient data)"


def _format_window(value: float, zero_padded: bool) -> str:
    # Zero-padded decimal strings such as "00040" occur in RSNA 2019 headers.
    return f"{int(round(value)):05d}" if zero_padded else f"{value:g}"


def slice_geometry(plan: SeriesPlan) -> tuple[list[float], list[list[float]], np.ndarray]:
    """Return ImageOrientationPatient, ImagePositionPatient per slice and the slice normal.

    Rows run along the patient's x axis. A gantry tilt turns the column direction and the
    slice normal about that axis, so positions step along the tilted normal, not along z.
    """
    row_direction = np.array([1.0, 0.0, 0.0])
    column_direction = np.array([0.0, np.cos(plan.tilt), -np.sin(plan.tilt)])
    normal = np.cross(row_direction, column_direction)  # (3,) unit vector towards the vertex
    centre_of_first = np.array([0.0, -20.0, plan.table_z])
    positions = []
    for height in slice_heights(plan):
        centre = centre_of_first + (height - plan.first_slice_mm) * normal
        corner = (
            centre
            - (plan.columns - 1) / 2 * plan.pixel_spacing * row_direction
            - (plan.rows - 1) / 2 * plan.pixel_spacing * column_direction
        )
        positions.append([round(float(value), 4) for value in corner])
    orientation = [round(float(value), 6) for value in (*row_direction, *column_direction)]
    return orientation, positions, normal


def build_dataset(plan: SeriesPlan, slice_index: int, stored: np.ndarray, orientation, position) -> Dataset:
    """Build the DICOM dataset of one slice from its stored pixel values (H, W)."""
    encoding = ENCODINGS[plan.encoding]
    sop_uid = plan.sop_uids[slice_index]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.StudyDescription = STUDY_DESCRIPTION
    ds.BodyPartExamined = "HEAD"
    ds.PatientName = plan.patient_id
    ds.PatientID = plan.patient_id
    ds.StudyInstanceUID = plan.study_uid
    ds.SeriesInstanceUID = plan.series_uid
    ds.FrameOfReferenceUID = plan.frame_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    if slice_index not in plan.missing_instance_numbers:
        ds.InstanceNumber = slice_index + 1
    ds.ImagePositionPatient = position
    ds.ImageOrientationPatient = orientation
    ds.SliceThickness = "5"
    ds.KVP = "120"
    ds.GantryDetectorTilt = f"{np.rad2deg(plan.tilt):.2f}"
    ds.PixelSpacing = [f"{plan.pixel_spacing:.6f}", f"{plan.pixel_spacing:.6f}"]

    center, width = plan.window
    center_text = _format_window(center, plan.window_zero_padded)
    width_text = _format_window(width, plan.window_zero_padded)
    ds.WindowCenter = [center_text, center_text] if plan.window_multivalue else center_text
    ds.WindowWidth = [width_text, width_text] if plan.window_multivalue else width_text
    ds.RescaleIntercept = f"{encoding.intercept:g}"
    ds.RescaleSlope = f"{encoding.slope:g}"
    ds.RescaleType = "HU"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = encoding.pixel_representation
    ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<")).tobytes()
    return ds


def write_series(plan: SeriesPlan, rendered: RenderedSeries, root: Path, min_area_mm2: float) -> np.ndarray:
    """Write one series' DICOM files and mask file under ``root``; return its (N, 5) labels.

    Files go to ``root/stage_2_train/<image id>.dcm`` and ``root/masks/<series uid>.npz``.
    """
    orientation, positions, _ = slice_geometry(plan)
    image_folder = root / "stage_2_train"
    for slice_index, image_id in enumerate(plan.image_ids):
        stored = encode_pixels(rendered.hu[slice_index], plan.encoding)
        ds = build_dataset(plan, slice_index, stored, orientation, positions[slice_index])
        path = image_folder / f"{image_id}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if slice_index in plan.truncated:
            truncate_file(path)

    # (N, 5, H, W) uint8 in subtype order, one row per slice from the skull base up.
    np.savez_compressed(
        root / "masks" / f"{plan.series_uid}.npz",
        image_ids=np.array(plan.image_ids),
        masks=rendered.masks.astype(np.uint8),
    )
    return slice_labels(rendered.masks, plan.pixel_spacing, min_area_mm2)


def label_rows(image_id: str, labels: np.ndarray) -> list[str]:
    """Return the six ``ID_<image>_<subtype>,Label`` rows of one image; ``any`` is the union."""
    values = [int(value) for value in labels] + [int(labels.max() > 0)]
    return [f"{image_id}_{column},{value}" for column, value in zip(LABEL_COLUMNS, values)]

