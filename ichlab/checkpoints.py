"""Training checkpoints that are safe to share: written atomically, read with ``weights_only``.

A checkpoint is a plain dict of tensors, numbers, strings and containers. Its entries are
``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``rng``
(one dict of random-generator states per process), ``config``, ``history`` (one dict per
epoch) and ``early_stopping``. ``config`` is the run's configuration as a plain dict, with
``arch`` and ``build_kwargs`` for :func:`ichlab.models.build_model` added. Loading it with ``torch.load(weights_only=True)``
cannot execute code, so a run folder from someone else is safe to open.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

BEST_NAME = "best.pt"  # lowest validation loss so far; evaluation loads this one
LAST_NAME = "last.pt"  # end of the latest epoch; resume continues from this one


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` to ``path`` through a temporary file and an atomic rename.

    A crash during the write leaves the previous file at ``path`` intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(checkpoint, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``torch.load(..., weights_only=True)``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a readable checkpoint: truncated, or containing objects other
        than tensors, numbers, strings and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train the model first or check the run folder")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"checkpoint {path} could not be read with weights_only=True ({_short_reason(error)}); it is damaged or "
            f"was not written by ichlab. Delete it and train again, or resume from {LAST_NAME}."
        ) from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"checkpoint {path} has no 'model' entry, so it was not written by ichlab.training")
    return checkpoint


def _short_reason(error: BaseException) -> str:
    """Return the informative line of a ``torch.load`` failure, prefixed with the exception type.

    torch's weights-only messages run to several paragraphs and suggest ``weights_only=False``,
    which would run code from the file. A file of random bytes can fail with a bare KeyError,
    and an empty one with no message at all.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
    reason = reason.removeprefix("WeightsUnpickler error: ").split(". ")[0]  # the first sentence
    if len(reason) > 200:
        reason = reason[:200] + "..."
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def load_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild a trained model from a checkpoint, in eval mode on the CPU.

    Parameters
    ----------
    path
        A checkpoint written by :func:`ichlab.training.train` (``best.pt`` or ``last.pt``).
    **overrides
        ``build_model`` keyword arguments that replace the stored ones, for example
        ``series_mode=False`` to run a model trained on chunks one window at a time.
    """
    from ichlab.models import build_model

    checkpoint = load_checkpoint(path)
    try:
        build_kwargs = dict(checkpoint["config"]["build_kwargs"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"checkpoint {path} has no config.build_kwargs entry, so the model cannot be rebuilt; "
            "use a best.pt or last.pt written by ichlab.training.train"
        ) from None
    build_kwargs.update(overrides)
    model = build_model(**build_kwargs)
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def capture_rng_state() -> dict[str, Any]:
    """Return the states of torch (CPU and CUDA), NumPy and Python random generators as plain data."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states captured by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_same_model(checkpoint: dict, model: nn.Module, path: Path) -> None:
    """Raise ValueError when ``checkpoint`` was written for a model built with other arguments."""
    saved = checkpoint["config"].get("build_kwargs", {})
    current = getattr(model, "build_kwargs", {})
    if saved and current and saved != current:
        raise ValueError(
            f"{path} was written for build_model({saved}), but the model passed in was built with "
            f"{current}; resume with the same model settings or use another run folder"
        )
