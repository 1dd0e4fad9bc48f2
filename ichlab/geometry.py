"""Any CT pixel grid to the model's square input, keeping its aspect ratio.

Slices come as 512 x 512 and also 638 x 490, 408 x 374, 768 x 768 and others, with pixel
spacing from about 0.3 to 1.0 mm. ``to_square`` resizes the long side to ``image_size`` and
pads the short side with air, so a disc stays a disc; optionally it first resamples to a fixed
physical pixel spacing, so one pixel means the same millimetres in every series.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

AIR_HU = -1024.0
INTERPOLATIONS = ("linear", "nearest")


def _fit_size(height: float, width: float, image_size: int) -> tuple[int, int]:
    scale = image_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(batch: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    # batch: (N, 1, H, W) float32
    if tuple(batch.shape[-2:]) == size:
        return batch
    if interpolation == "nearest":
        return F.interpolate(batch, size=size, mode="nearest-exact")
    shrinking = size[0] < batch.shape[-2] or size[1] < batch.shape[-1]
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def _center_pad_or_crop(batch: torch.Tensor, image_size: int, pad_value: float) -> torch.Tensor:
    # batch: (N, 1, h, w) -> (N, 1, image_size, image_size), centred
    height, width = batch.shape[-2:]
    top = max(0, (height - image_size) // 2)
    left = max(0, (width - image_size) // 2)
    batch = batch[..., top : top + image_size, left : left + image_size]

    height, width = batch.shape[-2:]
    pad_top = (image_size - height) // 2
    pad_left = (image_size - width) // 2
    padding = (pad_left, image_size - width - pad_left, pad_top, image_size - height - pad_top)
    return F.pad(batch, padding, mode="constant", value=pad_value)


def to_square(
    image: Any,
    image_size: int,
    *,
    pixel_spacing: Sequence[float] | None = None,
    target_spacing_mm: float | None = None,
    pad_value: float | None = None,
    interpolation: str = "linear",
) -> Any:
    """Resize an image (or a stack of images) into an ``image_size`` square without distortion.

    By default the long side of the pixel grid becomes ``image_size`` and the short side is
    padded symmetrically with ``pad_value``. With ``pixel_spacing`` the physical aspect ratio
    is kept instead (the same thing for square pixels). With ``target_spacing_mm`` the image is
    first resampled so one output pixel covers ``target_spacing_mm`` millimetres, then padded
    or centre-cropped to the square: the field of view becomes ``image_size * target_spacing_mm``.

    Parameters
    ----------
    image
        (H, W) or (..., H, W) NumPy array or torch tensor: HU, windows, or masks.
    image_size
        Side of the output square in pixels.
    pixel_spacing
        (row, column) spacing in mm, as in the DICOM PixelSpacing element. Required with
        ``target_spacing_mm``.
    target_spacing_mm
        Output pixel spacing in mm; None keeps the whole field of view.
    pad_value
        Value of the padding; None means air (-1024 HU) for ``"linear"`` and 0 for
        ``"nearest"``, so masks pad with background.
    interpolation
        ``"linear"`` (bilinear, antialiased when shrinking) for images, ``"nearest"`` for
        masks and labels.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Same kind as ``image``, shaped (..., image_size, image_size). Linear interpolation
        gives float32; nearest keeps the input dtype (bool masks stay bool).

    Raises
    ------
    ValueError
        For an unknown interpolation, a non-positive size or spacing, or
        ``target_spacing_mm`` without ``pixel_spacing``.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if target_spacing_mm is not None and pixel_spacing is None:
        raise ValueError("target_spacing_mm needs pixel_spacing (row, column in mm) to resample")
    if pixel_spacing is not None:
        row_mm, column_mm = (float(value) for value in pixel_spacing)
        if not (row_mm > 0 and column_mm > 0):
            raise ValueError(f"pixel_spacing must be two positive values in mm, got {tuple(pixel_spacing)}")
    if target_spacing_mm is not None and not target_spacing_mm > 0:
        raise ValueError(f"target_spacing_mm must be positive, got {target_spacing_mm}")
    if pad_value is None:
        pad_value = AIR_HU if interpolation == "linear" else 0.0

    is_numpy = not isinstance(image, torch.Tensor)
    tensor = torch.from_numpy(np.ascontiguousarray(image)) if is_numpy else image
    if tensor.ndim < 2:
        raise ValueError(f"expected an image shaped (H, W) or (..., H, W), got shape {tuple(tensor.shape)}")
    input_dtype = tensor.dtype
    leading = tensor.shape[:-2]
    height, width = tensor.shape[-2:]
    batch = tensor.reshape(-1, 1, height, width).float()  # (N, 1, H, W)

    if target_spacing_mm is not None:
        size = (
            max(1, round(height * row_mm / target_spacing_mm)),
            max(1, round(width * column_mm / target_spacing_mm)),
        )
    elif pixel_spacing is not None:
        size = _fit_size(height * row_mm, width * column_mm, image_size)
    else:
        size = _fit_size(height, width, image_size)

    batch = _resize(batch, size, interpolation)  # (N, 1, h, w)
    batch = _center_pad_or_crop(batch, image_size, pad_value)  # (N, 1, S, S)
    result = batch.reshape(*leading, image_size, image_size)  # (..., S, S)

    if interpolation == "nearest":
        # Nearest neighbour copies input values exactly, so the cast back is lossless.
        result = result.to(input_dtype)
    if is_numpy:
        return result.numpy()
    return result

