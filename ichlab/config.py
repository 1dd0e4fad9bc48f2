"""One configuration object per run, built from the mode in ``ICHLAB_MODE``.

Three modes share all code and differ only in numbers: ``quick`` (CI and nbval: a tiny
generated dataset, one epoch), ``demo`` (a CPU: models that visibly learn in about 15
minutes) and ``full`` (a GPU with the RSNA 2019 subset and pretrained weights). Notebooks
print the configuration; they never edit it cell by cell.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODES = ("quick", "demo", "full")

# Environment variables the library reads. All are read here, except that ichlab.models also
# reads ICHLAB_WEIGHTS when build_model is called directly without a weights file.
MODE_VARIABLE = "ICHLAB_MODE"
DATA_HOME_VARIABLE = "ICHLAB_DATA_HOME"
RSNA_ROOT_VARIABLE = "ICHLAB_RSNA_ROOT"
WEIGHTS_VARIABLE = "ICHLAB_WEIGHTS"


@dataclass
class DataConfig:
    """Data settings: the source of the slices and how they become model inputs."""

    source: str  # "generated" (the embedded phantom) or "rsna" (a Kaggle-layout folder)
    root: Path  # dataset folder; a generated one is created on first use
    cache_dir: Path  # preprocessed int16 HU arrays and their index table
    n_patients: int
    slices_per_series: tuple[int, int]  # inclusive range for generated series
    phantom_size: int  # pixels per side of generated DICOM slices
    image_size: int  # pixels per side of model inputs
    context_slices: int = 3  # K: slices in a 2.5D or LSTM window, odd
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test by patient
    seed: int = 0
    num_workers: int = 0


@dataclass
class ModelConfig:
    """The backbone and the pretrained-weights policy shared by the three paths."""

    backbone: str = "efficientnet_b0"
    pretrained: bool = False
    weights_file: Path | None = None  # local ImageNet weights (.pth or .safetensors)
    lstm_hidden: int = 256
    drop_rate: float = 0.2


@dataclass
class TrainConfig:
    """Optimisation settings used by ``ichlab.training``."""

    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    patience: int = 3  # epochs without a better validation loss before stopping
    seed: int = 0
    device: str = "auto"  # "auto", "cuda", "mps" or "cpu"
    amp: bool = True  # mixed precision on CUDA only
    channels_last: bool = True
    augment: bool = False  # random flips, small rotations and scaling, the same for every slice of a sample


@dataclass
class Config:
    """Everything one run needs: the mode, data, model and training settings, and where runs go."""

    mode: str
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    runs_dir: Path  # checkpoints and reports; notebooks 07 and 08 reuse what 04 to 06 saved here

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as plain types (str, int, float, list, dict) for JSON and checkpoints."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def current_mode() -> str:
    """Return the mode named by ``ICHLAB_MODE``, or ``demo`` when it is unset.

    Raises
    ------
    ValueError
        If the variable contains anything other than quick, demo or full.
    """
    mode = os.environ.get(MODE_VARIABLE, "").strip().lower() or "demo"
    if mode not in MODES:
        raise ValueError(
            f"{MODE_VARIABLE}={os.environ[MODE_VARIABLE]!r} is not a mode; "
            f"set it to one of {', '.join(MODES)}"
        )
    return mode


def data_home() -> Path:
    """Return the folder for generated data, caches and downloaded subsets.

    ``ICHLAB_DATA_HOME`` wins; otherwise a source checkout uses its own ``data/`` folder and
    an installed package uses ``~/ichlab-data``.
    """
    configured = os.environ.get(DATA_HOME_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    checkout_data = Path(__file__).resolve().parents[1] / "data"
    if (checkout_data / "README.md").is_file():
        return checkout_data
    return Path.home() / "ichlab-data"


def get_config(mode: str | None = None) -> Config:
    """Build the configuration for ``mode`` (default: ``ICHLAB_MODE``, else demo).

    Parameters
    ----------
    mode
        ``"quick"``, ``"demo"`` or ``"full"``.

    Returns
    -------
    Config
        A fresh object; changing it does not affect later calls.
    """
    mode = mode or current_mode()
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    home = data_home()
    weights = os.environ.get(WEIGHTS_VARIABLE)
    weights_file = Path(weights).expanduser() if weights else None

    if mode == "quick":
        data = DataConfig(
            source="generated",
            root=home / "generated" / "quick",
            cache_dir=home / "cache" / "quick",
            n_patients=24,
            slices_per_series=(20, 24),
            phantom_size=256,
            image_size=128,
        )
        train = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3)
    elif mode == "demo":
        data = DataConfig(
            source="generated",
            root=home / "generated" / "demo",
            cache_dir=home / "cache" / "demo",
            n_patients=60,
            slices_per_series=(20, 28),
            phantom_size=256,
            image_size=128,
        )
        train = TrainConfig(epochs=10, batch_size=16, learning_rate=2e-3, patience=4)
    else:
        data = DataConfig(
            source="rsna",
            root=Path(os.environ.get(RSNA_ROOT_VARIABLE, home / "rsna")).expanduser(),
            cache_dir=home / "cache" / "full",
            n_patients=1000,
            slices_per_series=(20, 40),
            phantom_size=512,
            image_size=224,
            num_workers=4,
        )
        train = TrainConfig(epochs=10, batch_size=32, learning_rate=3e-4, warmup_epochs=1.0, augment=True)

    model = ModelConfig(pretrained=(mode == "full"), weights_file=weights_file)
    return Config(mode=mode, data=data, model=model, train=train, runs_dir=home / "runs" / mode)
