"""Colab helpers: keep data and checkpoints on Google Drive, and check that a GPU is attached.

Both are safe to call anywhere. Outside Colab, :func:`mount_drive` changes nothing and
returns None, and :func:`check_gpu` reports which GPU torch can use on the local machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ichlab.config import DATA_HOME_VARIABLE, current_mode
from ichlab.course import on_colab

logger = logging.getLogger(__name__)

# Colab's mount point for Google Drive. The student's files are under MyDrive/ inside it.
DRIVE_MOUNT_POINT = Path("/content/drive")
DRIVE_FOLDER = "ichlab-data"


def mount_drive(folder: str = DRIVE_FOLDER, mount_point: str | Path = DRIVE_MOUNT_POINT) -> Path | None:
    """Mount Google Drive on Colab and keep ichlab's data, caches and checkpoints in a Drive folder.

    Sets ``ICHLAB_DATA_HOME`` to ``<mount_point>/MyDrive/<folder>``, so generated data, the
    slice cache and the checkpoints under ``runs/`` outlive the Colab session. Call it before
    ``course.start`` or ``get_config``, which read the variable. On the first call Colab shows
    a dialog in which the student grants access to Drive.

    Parameters
    ----------
    folder
        Folder inside MyDrive, relative, created when missing.
    mount_point
        Where Drive is mounted; Colab's convention is ``/content/drive``.

    Returns
    -------
    Path or None
        The data folder on Drive, or None outside Colab, where nothing is changed.

    Raises
    ------
    ValueError
        If ``folder`` is absolute or leaves MyDrive with ``..``.

    Notes
    -----
    Drive is slower than the runtime's local disk for many small files: generating the
    demo dataset there takes longer than on ``/content``, but later sessions reuse it.
    """
    relative = Path(folder)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"Drive folder {folder!r} must be a relative path inside MyDrive, such as 'ichlab-data'")
    if not on_colab():
        logger.info("not running on Colab: Google Drive is not mounted and %s is unchanged", DATA_HOME_VARIABLE)
        return None

    from google.colab import drive  # only importable on Colab

    drive.mount(str(mount_point))
    data_home = Path(mount_point) / "MyDrive" / relative
    data_home.mkdir(parents=True, exist_ok=True)
    os.environ[DATA_HOME_VARIABLE] = str(data_home)
    logger.info("data, caches and checkpoints go to %s (%s is set)", data_home, DATA_HOME_VARIABLE)
    return data_home


def gpu_available() -> bool:
    """Return True when torch can use a CUDA GPU or an Apple GPU (MPS)."""
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def gpu_advice(mode: str | None = None) -> str | None:
    """Return what to do about a missing GPU, or None when one is attached.

    Parameters
    ----------
    mode
        quick, demo or full; default ``ICHLAB_MODE``, else demo.
    """
    if gpu_available():
        return None
    mode = mode or current_mode()
    if on_colab():
        return (
            "No GPU is attached to this Colab runtime. Choose Runtime > Change runtime type, select a GPU "
            "(for example T4 GPU), save, then run the notebook again from the top: changing the runtime "
            "starts a new machine, so mount Drive again if you use it."
        )
    if mode == "full":
        return (
            "No GPU found: full mode trains on the RSNA subset at 224 px and takes many hours on a CPU. "
            "Install a CUDA build of torch on a machine with an NVIDIA GPU, open the notebook on Colab "
            "with a GPU runtime, or set ICHLAB_MODE=demo."
        )
    return f"No GPU found: {mode} mode is sized for a CPU, so the course runs as it is, only slower than on a GPU."


def check_gpu(mode: str | None = None) -> bool:
    """Log whether a GPU is attached, with advice as a warning when none is.

    Returns
    -------
    bool
        True when torch can use a CUDA or Apple GPU.
    """
    advice = gpu_advice(mode)
    if advice is None:
        logger.info("GPU attached")
        return True
    logger.warning(advice)
    return False
