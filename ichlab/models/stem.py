"""Input handling shared by the three paths: normalisation and the tile-and-divide stem.

A 2.5D input stacks K slices of three CT windows each into 3K channels, slice-major:
channel ``3 * s + w`` is window ``w`` of slice ``s`` (previous, current, next for K = 3).
The stem convolution sees those channels through pretrained 3-channel weights repeated K
times and divided by K, so K identical slices give exactly the 3-channel stem output.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def tile_and_divide(weight: torch.Tensor, n_slices: int) -> torch.Tensor:
    """Adapt 3-channel stem weights to ``n_slices`` stacked slices of three windows each.

    Parameters
    ----------
    weight
        Convolution weights of shape (out, 3, kh, kw), for example the pretrained
        EfficientNet-B0 stem (32, 3, 3, 3).
    n_slices
        Number of slices stacked along the channel axis (3 for previous, current, next).

    Returns
    -------
    torch.Tensor
        Weights of shape (out, 3 * n_slices, kh, kw) with the input dtype: the weights
        repeated ``n_slices`` times along the input-channel axis and divided by ``n_slices``.

    Notes
    -----
    The convolution is linear in its input, so when every slice equals the same image x,
    the adapted stem gives ``sum_s (w / n) * x = w * x``: the 3-channel output. timm's
    ``adapt_input_conv`` (timm 1.0) applies the same rule (repeat, scale by 3 / in_chans).

    Raises
    ------
    ValueError
        If ``weight`` is not 4-D with 3 input channels or ``n_slices`` is below 1.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(
            f"tile_and_divide expects stem weights of shape (out, 3, kh, kw); got {tuple(weight.shape)}"
        )
    if int(n_slices) != n_slices or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer; got {n_slices!r}")

    tiled = weight.repeat(1, int(n_slices), 1, 1)  # (out, 3 * n_slices, kh, kw)
    return tiled / n_slices


def tiled_stem(conv: nn.Conv2d, n_slices: int) -> nn.Conv2d:
    """Return a copy of a 3-channel stem convolution that accepts ``3 * n_slices`` channels."""
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != 3:
        raise ValueError(f"the backbone's first convolution must be a 3-channel Conv2d; got {conv!r}")
    adapted = copy.deepcopy(conv)
    adapted.in_channels = 3 * n_slices
    adapted.weight = nn.Parameter(tile_and_divide(conv.weight.detach(), n_slices))
    return adapted


def stack_slices(window: torch.Tensor) -> torch.Tensor:
    """Fold a window of slices into channels: (B, K, 3, H, W) to (B, 3K, H, W), slice-major."""
    if window.ndim != 5 or window.shape[2] != 3:
        raise ValueError(f"expected a window of shape (B, K, 3, H, W); got {tuple(window.shape)}")
    batch, slices, windows, height, width = window.shape
    return window.reshape(batch, slices * windows, height, width)  # (B, 3K, H, W)


class InputNormalization(nn.Module):
    """Subtract the backbone's pretrained mean and divide by its standard deviation.

    The three per-window statistics are repeated for each of ``n_slices`` stacked slices,
    so a (B, 3K, H, W) input is normalised slice by slice in the slice-major layout. The
    statistics are non-persistent buffers: they come from the backbone's configuration, so
    state dicts of the 2D and 2.5D models hold the same keys.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], n_slices: int = 1):
        super().__init__()
        mean_tensor = torch.tensor(mean, dtype=torch.float32).repeat(n_slices)  # (3K,)
        std_tensor = torch.tensor(std, dtype=torch.float32).repeat(n_slices)  # (3K,)
        self.register_buffer("mean", mean_tensor.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_tensor.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected {self.mean.shape[1]} input channels (three windows per slice); "
                f"got input of shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std
