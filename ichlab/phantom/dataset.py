"""Write and read a generated dataset folder in the RSNA layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np


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
) -> Path:
    """Generate a head-CT dataset folder (work in progress)."""
    raise NotImplementedError("ichlab.phantom.generate_dataset is being written")


def load_masks(root: str | Path, image_ids: Iterable[str]) -> dict[str, np.ndarray]:
    """Return image id -> (5, H, W) bool lesion masks (work in progress)."""
    raise NotImplementedError("ichlab.phantom.load_masks is being written")
