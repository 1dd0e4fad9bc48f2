"""The 2D and 2.5D paths: one EfficientNet-B0 over one slice or over a stack of slices.

2D sees the current slice's three windows (B, 3, H, W). 2.5D sees K slices stacked into
channels (B, 3K, H, W), previous, current, next for K = 3, through a stem adapted by tile
and divide; everything after the stem is the unchanged 2D network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ichlab.models.stem import InputNormalization, tile_and_divide, tiled_stem


def first_conv_name(backbone: nn.Module) -> str:
    """Return the attribute path of a timm model's first convolution (``conv_stem`` for EfficientNet)."""
    return backbone.pretrained_cfg["first_conv"]


def replace_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` inside ``root``."""
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


class SliceClassifier(nn.Module):
    """EfficientNet-B0 over one slice (2D) or K stacked slices (2.5D), with a linear head.

    Parameters
    ----------
    backbone
        A 3-channel timm feature extractor (``num_classes=0``). For ``n_slices > 1`` its
        stem is replaced by a tile-and-divide copy that accepts 3 * n_slices channels.
    num_classes
        Number of logits (5 hemorrhage subtypes).
    n_slices
        1 for the 2D path, K for the 2.5D path.
    drop_rate
        Dropout on the pooled features before the head.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 5, n_slices: int = 1, drop_rate: float = 0.2):
        super().__init__()
        if n_slices > 1:
            stem_name = first_conv_name(backbone)
            replace_submodule(backbone, stem_name, tiled_stem(backbone.get_submodule(stem_name), n_slices))

        config = backbone.pretrained_cfg
        self.n_slices = n_slices
        self.normalize = InputNormalization(config["mean"], config["std"], n_slices)
        self.backbone = backbone
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.arch = "2d" if n_slices == 1 else "2.5d"
        self.build_kwargs: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (B, num_classes) for windowed inputs (B, 3 * n_slices, H, W) in [0, 1]."""
        x = self.normalize(x)
        features = self.backbone(x)  # (B, 1280)
        return self.head(self.dropout(features))  # (B, num_classes)


def transfer_2d_weights(source: SliceClassifier, target: SliceClassifier) -> SliceClassifier:
    """Copy a 2D model's weights into a 2.5D model, adapting the stem by tile and divide.

    With the copied weights, K identical slices give the 2.5D model the 2D model's logits.

    Returns
    -------
    SliceClassifier
        ``target``, with its weights replaced.
    """
    if source.n_slices != 1:
        raise ValueError(f"the source must be a 2D model (one slice); it takes {source.n_slices} slices")
    state = source.state_dict()
    stem_key = f"backbone.{first_conv_name(source.backbone)}.weight"
    state[stem_key] = tile_and_divide(state[stem_key], target.n_slices)
    target.load_state_dict(state)
    return target
