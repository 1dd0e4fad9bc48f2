"""The three EfficientNet-B0 paths: 2D, 2.5D (tile-and-divide stem) and LSTM over slices.

:func:`build_model` is the one entry point; every model normalises its [0, 1] windowed
inputs itself with the backbone's pretrained mean and standard deviation, exposes ``arch``,
``backbone`` (the timm feature extractor, (B, 1280) for EfficientNet-B0) and
``build_kwargs`` (plain keyword arguments that rebuild it with ``build_model(**kwargs)``).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ichlab import SUBTYPES
from ichlab.models.sequence import SequenceClassifier
from ichlab.models.slices import SliceClassifier, transfer_2d_weights
from ichlab.models.stem import InputNormalization, stack_slices, tile_and_divide
from ichlab.models.weights import PretrainedWeightsError, create_backbone, resolve_weights_file

ARCHS = ("2d", "2.5d", "lstm")

__all__ = [
    "ARCHS",
    "InputNormalization",
    "PretrainedWeightsError",
    "SequenceClassifier",
    "SliceClassifier",
    "build_model",
    "create_backbone",
    "resolve_weights_file",
    "stack_slices",
    "tile_and_divide",
    "transfer_2d_weights",
]


def build_model(
    arch: str,
    num_classes: int = len(SUBTYPES),
    *,
    pretrained: bool = False,
    weights_file: str | os.PathLike | None = None,
    backbone: str = "efficientnet_b0",
    context_slices: int = 3,
    series_mode: bool = False,
    bidirectional: bool = False,
    lstm_hidden: int = 256,
    drop_rate: float = 0.2,
) -> nn.Module:
    """Build one of the three paths on a timm backbone.

    Parameters
    ----------
    arch
        ``"2d"``: input (B, 3, H, W), one slice with three windows. ``"2.5d"``: input
        (B, 3K, H, W), K slices (previous, current, next for K = 3) with three windows
        each, slice-major. ``"lstm"``: input (B, K, 3, H, W) ordered slices. All return
        logits (B, num_classes); the LSTM in series mode returns (B, M, num_classes).
    num_classes
        Number of logits, one per hemorrhage subtype in ``ichlab.SUBTYPES`` order.
    pretrained
        Start from ImageNet weights: from ``weights_file`` or ``ICHLAB_WEIGHTS`` when set,
        otherwise from the timm hub. The 2.5D stem is adapted from them by tile and divide.
    weights_file
        A local timm checkpoint (.pth or .safetensors) of ``backbone``; read only when
        ``pretrained`` is True.
    backbone
        The timm model name.
    context_slices
        K, the odd number of slices per window for ``"2.5d"`` and ``"lstm"`` (3, 5 or 7).
    series_mode
        ``"lstm"`` only: ``forward`` takes chunks of consecutive slices and embeds each
        slice once (``SequenceClassifier.forward_series``).
    bidirectional
        ``"lstm"`` only: a bidirectional LSTM; in series mode it reads the whole chunk.
    lstm_hidden
        ``"lstm"`` only: the LSTM hidden size.
    drop_rate
        Dropout before the linear head.

    Returns
    -------
    nn.Module
        A :class:`SliceClassifier` (2D, 2.5D) or :class:`SequenceClassifier` (LSTM).

    Raises
    ------
    ValueError
        For an unknown ``arch``, an even ``context_slices``, or LSTM options given to
        another path.
    PretrainedWeightsError
        If ``pretrained`` is True and neither a local file nor the hub has the weights.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    if context_slices < 1 or context_slices % 2 == 0:
        raise ValueError(f"context_slices must be odd and positive (3, 5, 7); got {context_slices}")
    if arch != "lstm" and (series_mode or bidirectional):
        raise ValueError(f"series_mode and bidirectional are options of the 'lstm' path, not of {arch!r}")

    features = create_backbone(backbone, pretrained=pretrained, weights_file=weights_file)

    if arch == "lstm":
        model: nn.Module = SequenceClassifier(
            features,
            num_classes,
            context_slices=context_slices,
            lstm_hidden=lstm_hidden,
            bidirectional=bidirectional,
            series_mode=series_mode,
            drop_rate=drop_rate,
        )
    else:
        n_slices = 1 if arch == "2d" else context_slices
        model = SliceClassifier(features, num_classes, n_slices=n_slices, drop_rate=drop_rate)

    # Rebuilding from these loads a checkpoint afterwards, so it needs no pretrained weights.
    build_kwargs: dict[str, Any] = {
        "arch": arch,
        "num_classes": num_classes,
        "backbone": backbone,
        "context_slices": context_slices,
        "series_mode": series_mode,
        "bidirectional": bidirectional,
        "lstm_hidden": lstm_hidden,
        "drop_rate": drop_rate,
    }
    model.build_kwargs = build_kwargs
    return model
