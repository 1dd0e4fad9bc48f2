"""CT windows: Hounsfield units mapped onto [0, 1], three windows stacked as image channels.

A window (center, width) maps HU linearly from ``center - width / 2`` to ``center + width / 2``
onto [0, 1] and clips outside. The models always use the fixed windows in ``WINDOWS``, in the
channel order ``CHANNEL_ORDER``, whatever WindowCenter and WindowWidth the DICOM header holds.
Both functions accept NumPy arrays and torch tensors, so windowing can run per batch on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Window name to (center, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (600.0, 2800.0),
}

# The order of the window channels in every model input: (3, H, W) is brain, subdural, bone.
CHANNEL_ORDER: tuple[str, ...] = ("brain", "subdural", "bone")


def _is_tensor(value: Any) -> bool:
    # Checked by module name so that NumPy-only callers never import torch.
    return type(value).__module__.startswith("torch")


def apply_window(hu: Any, center: float, width: float) -> Any:
    """Map HU onto [0, 1] through one window and clip outside it.

    Parameters
    ----------
    hu
        HU values of any shape, as a NumPy array or a torch tensor (on any device).
    center, width
        Window center and width in HU; the width must be positive.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        Same shape and kind as ``hu``, float32, values in [0, 1]. A constant image gives a
        constant result, never NaN.

    Raises
    ------
    ValueError
        If ``width`` is not positive.
    """
    width = float(width)
    if not width > 0:
        raise ValueError(f"window width must be positive, got {width}")
    lower = float(center) - width / 2.0

    if _is_tensor(hu):
        scaled = (hu.float() - lower) / width
        return scaled.clamp_(0.0, 1.0)

    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(lower)) / np.float32(width)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32, copy=False)


def stack_windows(hu: Any, names: Sequence[str] = CHANNEL_ORDER) -> Any:
    """Window one HU image (or a batch) with each named window and stack them as channels.

    Parameters
    ----------
    hu
        HU values shaped (H, W) or (..., H, W), as a NumPy array or a torch tensor.
    names
        Window names from ``WINDOWS``, in channel order.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        float32 shaped (len(names), H, W) for one image, (..., len(names), H, W) for a batch.

    Raises
    ------
    KeyError
        If a name is not in ``WINDOWS``.
    ValueError
        If ``hu`` has fewer than two dimensions.
    """
    if len(hu.shape) < 2:
        raise ValueError(f"expected HU shaped (H, W) or (..., H, W), got shape {tuple(hu.shape)}")
    for name in names:
        if name not in WINDOWS:
            raise KeyError(f"unknown window {name!r}; choose from {', '.join(WINDOWS)}")

    channels = [apply_window(hu, *WINDOWS[name]) for name in names]
    if _is_tensor(hu):
        import torch

        return torch.stack(channels, dim=-3)  # (..., C, H, W)
    return np.stack(channels, axis=-3)  # (..., C, H, W)
