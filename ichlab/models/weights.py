"""Creating the timm backbone, with pretrained ImageNet weights from the hub or a local file.

Pretrained weights come from the Hugging Face hub when the machine is online (Colab), or
from a local ``.pth`` or ``.safetensors`` file named by an argument or by ``ICHLAB_WEIGHTS``.
Asking for pretrained weights that cannot be found raises :class:`PretrainedWeightsError`;
the backbone never continues silently with random weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import timm
from torch import nn

from ichlab.config import WEIGHTS_VARIABLE

logger = logging.getLogger(__name__)


class PretrainedWeightsError(RuntimeError):
    """Raised when pretrained weights were requested but neither the hub nor a local file has them."""


def resolve_weights_file(weights_file: str | os.PathLike | None) -> Path | None:
    """Return the local weights file: the argument, else ``ICHLAB_WEIGHTS``, else None.

    Raises
    ------
    FileNotFoundError
        If the named file does not exist.
    """
    source = "weights_file"
    if weights_file is None and os.environ.get(WEIGHTS_VARIABLE):
        weights_file = os.environ[WEIGHTS_VARIABLE]
        source = WEIGHTS_VARIABLE
    if weights_file is None:
        return None

    path = Path(weights_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{source}={str(weights_file)!r}: no such file; give the path of a timm ImageNet "
            f"checkpoint (.pth or .safetensors) or pass pretrained=False"
        )
    return path


def create_backbone(
    name: str = "efficientnet_b0",
    *,
    pretrained: bool = False,
    weights_file: str | os.PathLike | None = None,
) -> nn.Module:
    """Create a 3-channel timm feature extractor (``num_classes=0``, pooled features).

    Parameters
    ----------
    name
        A timm model name; ``efficientnet_b0`` gives (B, 1280) features.
    pretrained
        Load ImageNet weights: from ``weights_file`` or ``ICHLAB_WEIGHTS`` when either is
        set, otherwise from the timm hub.
    weights_file
        A local timm checkpoint of the same architecture (its classifier is dropped).

    Raises
    ------
    PretrainedWeightsError
        If ``pretrained`` is True, no local file is named and the hub cannot be reached.
    FileNotFoundError
        If the named weights file does not exist.
    """
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0)

    local_file = resolve_weights_file(weights_file)
    if local_file is not None:
        logger.info("loading %s ImageNet weights from %s", name, local_file)
        # timm reads the file offline and drops the ImageNet classifier for num_classes=0.
        return timm.create_model(
            name,
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay=dict(file=str(local_file)),
        )

    logger.info("loading %s ImageNet weights from the timm hub", name)
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as error:
        raise PretrainedWeightsError(
            f"pretrained {name} weights could not be loaded from the hub ({type(error).__name__}: {error}). "
            f"Either connect to the internet so timm can download them, or download the weights file "
            f"elsewhere and pass weights_file=PATH (or set {WEIGHTS_VARIABLE}=PATH); "
            f"pass pretrained=False to train from random weights on purpose."
        ) from error
