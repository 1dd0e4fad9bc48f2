"""Tests for ichlab.geometry.to_square: aspect ratio, padding, masks and fixed spacing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichlab.geometry import to_square


def disc_image(height: int, width: int, radius: float, *, spacing=(1.0, 1.0)) -> np.ndarray:
    """A 40 HU disc of ``radius`` mm on -1024 HU air, centred, on a (height, width) grid."""
    rows = (np.arange(height) - (height - 1) / 2) * spacing[0]
    columns = (np.arange(width) - (width - 1) / 2) * spacing[1]
    inside = rows[:, None] ** 2 + columns[None, :] ** 2 <= radius**2
    return np.where(inside, 40.0, -1024.0).astype(np.float32)


def extents(image: np.ndarray, threshold: float = -500.0) -> tuple[int, int]:
    rows, columns = np.nonzero(image > threshold)
    return rows.max() - rows.min() + 1, columns.max() - columns.min() + 1


@pytest.mark.parametrize("shape", [(638, 490), (408, 374), (512, 512), (374, 408)])
def test_disc_stays_disc(shape):
    image = disc_image(*shape, radius=150)
    square = to_square(image, 64)
    assert square.shape == (64, 64)
    assert square.dtype == np.float32
    height, width = extents(square)
    assert abs(height - width) <= 1


def test_long_side_fills_square_and_pads_with_air():
    image = np.full((638, 490), 40.0, dtype=np.float32)
    square = to_square(image, 64)
    height, width = extents(square)
    assert height == 64
    assert width == round(490 * 64 / 638)
    assert square[0, 0] == -1024.0
    assert square[32, 32] == pytest.approx(40.0)


def test_custom_pad_value():
    square = to_square(np.zeros((40, 20), dtype=np.float32), 16, pad_value=-2000.0)
    assert square[8, 0] == -2000.0


def test_mask_nearest_keeps_bool():
    mask = disc_image(120, 80, radius=30) > 0
    stacked = np.stack([mask, ~mask])  # (2, H, W)
    square = to_square(stacked, 32, interpolation="nearest")
    assert square.shape == (2, 32, 32)
    assert square.dtype == np.bool_
    assert not square[0, 0, 0]  # padding is background
    assert square[0, 16, 16]


def test_mask_nearest_keeps_label_values():
    labels = np.zeros((30, 60), dtype=np.uint8)
    labels[:, 30:] = 3
    square = to_square(labels, 20, interpolation="nearest")
    assert square.dtype == np.uint8
    assert set(np.unique(square).tolist()) == {0, 3}


def test_torch_batch_input():
    batch = torch.from_numpy(np.stack([disc_image(100, 60, 25)] * 3))  # (3, H, W)
    square = to_square(batch, 32)
    assert isinstance(square, torch.Tensor)
    assert tuple(square.shape) == (3, 32, 32)


def test_anisotropic_pixels_keep_physical_shape():
    # 0.5 mm rows and 1.0 mm columns: the disc is twice as tall in pixels as it is wide.
    image = disc_image(200, 100, radius=40, spacing=(0.5, 1.0))
    square = to_square(image, 64, pixel_spacing=(0.5, 1.0))
    height, width = extents(square)
    assert abs(height - width) <= 1


def test_target_spacing_sets_pixel_size():
    # 512 px at 0.5 mm is 256 mm; at 2 mm per pixel that is 128 px, padded into 160.
    image = disc_image(512, 512, radius=40, spacing=(0.5, 0.5))
    square = to_square(image, 160, pixel_spacing=(0.5, 0.5), target_spacing_mm=2.0)
    height, width = extents(square)
    assert abs(height - 40) <= 1  # an 80 mm diameter is 40 px at 2 mm
    assert abs(width - 40) <= 1
    assert square[0, 0] == -1024.0


def test_target_spacing_crops_large_field():
    # 400 mm at 1 mm per pixel does not fit in 128 px: the centre is kept.
    image = disc_image(400, 400, radius=30)
    square = to_square(image, 128, pixel_spacing=(1.0, 1.0), target_spacing_mm=1.0)
    assert square.shape == (128, 128)
    height, width = extents(square)
    assert abs(height - 61) <= 1
    assert abs(width - 61) <= 1


def test_target_spacing_needs_pixel_spacing():
    with pytest.raises(ValueError, match="pixel_spacing"):
        to_square(np.zeros((8, 8)), 4, target_spacing_mm=1.0)


def test_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match="interpolation"):
        to_square(np.zeros((8, 8)), 4, interpolation="cubic")


def test_rejects_bad_spacing():
    with pytest.raises(ValueError, match="pixel_spacing"):
        to_square(np.zeros((8, 8)), 4, pixel_spacing=(0.0, 1.0))
