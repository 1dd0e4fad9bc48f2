"""Grad-CAM maps for the 2D, 2.5D and LSTM paths, computed with pytorch-grad-cam.

A map shows which pixels raised the logit of one named subtype for one image. The three paths share the EfficientNet-B0 backbone, so the map always comes from
the same layer (:func:`target_layer`); for the LSTM path it comes from the backbone's
activations of one slice of the window (the centre slice by default).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ichlab import SUBTYPES

logger = logging.getLogger(__name__)

__all__ = [
    "CamResult",
    "cache_inputs",
    "cam_explorer",
    "cam_scores_per_slice",
    "compare_models_figure",
    "compute_cams",
    "compute_window_cams",
    "explorer_figure",
    "overlay_cam",
    "save_overlay",
    "save_subtype_figure",
    "score_cams",
    "score_maps",
    "score_models",
    "scores_to_markdown",
    "subtype_figure",
    "target_layer",
    "window_figure",
]

# A map is reported as empty when its largest positive value before normalisation is at
# most this fraction of its largest absolute value. Such a positive part is float32
# rounding noise, which normalisation to [0, 1] would turn into a random pattern. The
# test is relative because the raw scale (activation times gradient) depends on the
# weights: an untrained EfficientNet-B0 at 64 px gives peaks near 1e-7.
EMPTY_RELATIVE_PEAK = 1e-5


@dataclass
class CamResult:
    """Grad-CAM maps for a batch, one per image and named subtype.

    Attributes
    ----------
    maps
        (B, H, W) float32 in [0, 1], at the input's height and width. An empty map is all zeros.
    empty
        (B,) bool: True where the subtype's logit had no positive evidence in the target
        layer (the map before normalisation was zero everywhere, or constant).
    subtypes
        The subtype index explained in each map, in ``ichlab.SUBTYPES`` order.
    peaks
        (B,) float32: each map's maximum before normalisation, in activation times gradient units.
    scales
        (B,) float32: each map's largest absolute value before the ReLU, in the same units.
    """

    maps: np.ndarray
    empty: np.ndarray
    subtypes: list[int]
    peaks: np.ndarray
    scales: np.ndarray

    def __len__(self) -> int:
        return len(self.maps)


def target_layer(model: nn.Module) -> nn.Module:
    """Return the layer whose activations and gradients give the CAM: ``model.backbone.bn2``.

    ``bn2`` is timm EfficientNet's batch norm and SiLU after ``conv_head``, the last 1x1
    convolution. Its output is the (B, 1280, H/32, W/32) feature map that global average
    pooling turns into the 1280-d embedding. For the 2D and 2.5D paths, whose head is
    linear, Grad-CAM on this layer equals the original class activation map, which
    ``conv_head`` (before the activation) or ``blocks[-1]`` (320 channels) would not.

    Raises
    ------
    AttributeError
        If the model has no ``backbone.bn2`` (a backbone other than timm's EfficientNet).
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "bn2"):
        raise AttributeError(
            f"{type(model).__name__} has no backbone.bn2; Grad-CAM in ichlab expects a model from "
            "ichlab.models.build_model with a timm EfficientNet backbone"
        )
    return backbone.bn2


def subtype_indices(subtypes: Sequence[str | int], n_images: int) -> list[int]:
    """Convert subtype names or indices, one per image, to indices into ``ichlab.SUBTYPES``.

    Raises
    ------
    ValueError
        If the list length differs from ``n_images``, or a name or index is not a subtype.
    """
    if isinstance(subtypes, (str, int)):
        raise ValueError(f"subtypes must be a list with one subtype per image, got the single value {subtypes!r}")
    subtypes = list(subtypes)
    if len(subtypes) != n_images:
        raise ValueError(
            f"got {len(subtypes)} subtypes for {n_images} images; pass exactly one subtype per image "
            "(for example [subtype] * len(images))"
        )
    indices = []
    for subtype in subtypes:
        if isinstance(subtype, (int, np.integer)) and not isinstance(subtype, bool):
            if not 0 <= subtype < len(SUBTYPES):
                raise ValueError(f"subtype index {subtype} is out of range; use 0 to {len(SUBTYPES) - 1}")
            indices.append(int(subtype))
        elif subtype in SUBTYPES:
            indices.append(SUBTYPES.index(subtype))
        else:
            raise ValueError(f"{subtype!r} is not a subtype; use one of {', '.join(SUBTYPES)}")
    return indices


class SequenceAsChannels(nn.Module):
    """Present a sequence model to grad-cam as an image model.

    grad-cam treats a 5-D input as a volume, so the (B, K, 3, H, W) window is folded into
    (B, K*3, H, W) for grad-cam and unfolded here before the wrapped model runs.
    """

    def __init__(self, model: nn.Module, n_slices: int) -> None:
        super().__init__()
        self.model = model
        self.n_slices = n_slices

    def forward(self, folded: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = folded.shape
        window = folded.reshape(batch, self.n_slices, channels // self.n_slices, height, width)  # (B, K, 3, H, W)
        # A series-mode model's forward takes chunks of a series; its per-window forward
        # gives the logits of the window's centre slice in both modes.
        forward_window = getattr(self.model, "forward_window", self.model)
        return forward_window(window)  # (B, 5)


def slice_reshape_transform(n_slices: int, position: int):
    """Return a function that picks one slice's maps from the backbone's (B*K, C, h, w) output.

    The LSTM path runs its shared backbone on all slices of the batch at once, with the
    slices of one window contiguous, so row ``b * K + position`` is slice ``position`` of window ``b``.
    """

    def pick_slice(activations: torch.Tensor) -> torch.Tensor:
        if activations.shape[0] % n_slices:
            raise RuntimeError(
                f"the backbone produced {activations.shape[0]} feature maps, not a multiple of the "
                f"{n_slices} slices per window; the sequence model does not embed all slices in one call"
            )
        per_window = activations.reshape(-1, n_slices, *activations.shape[1:])  # (B, K, C, h, w)
        return per_window[:, position]  # (B, C, h, w)

    return pick_slice


@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Restore each module's train/eval mode and each parameter's requires_grad and .grad on exit.

    Inside the block, parameters do not require gradients: the CAM needs gradients of the
    activations only, which flow from an input that requires them.
    """
    modes = {module: module.training for module in model.modules()}
    parameters = list(model.parameters())
    requires_grad = [parameter.requires_grad for parameter in parameters]
    grads = [parameter.grad for parameter in parameters]
    try:
        for parameter in parameters:
            parameter.requires_grad_(False)
        yield
    finally:
        for module, training in modes.items():
            module.train(training)
        for parameter, required, grad in zip(parameters, requires_grad, grads):
            parameter.requires_grad_(required)
            parameter.grad = grad


def _cudnn_context(model: nn.Module, device: torch.device):
    # cuDNN implements an RNN's backward pass only in training mode, but grad-cam runs the
    # model in eval mode. PyTorch's native LSTM kernels, used when cuDNN is off, support both modes.
    has_rnn = any(isinstance(module, nn.RNNBase) for module in model.modules())
    if device.type == "cuda" and has_rnn:
        return torch.backends.cudnn.flags(enabled=False)
    return contextlib.nullcontext()


class _GradCAMWithPeaks(GradCAM):
    """GradCAM that also stores each map's extremes before grad-cam's ReLU and normalisation."""

    peaks: np.ndarray | None = None
    scales: np.ndarray | None = None

    def get_cam_image(self, *args, **kwargs) -> np.ndarray:
        cam = super().get_cam_image(*args, **kwargs)  # (B, h, w), before ReLU and scaling
        flat = cam.reshape(len(cam), -1)
        self.peaks = np.maximum(flat, 0).max(axis=1)
        self.scales = np.abs(flat).max(axis=1)
        return cam


def _resolve_position(slice_position: str | int, n_slices: int) -> int:
    if slice_position == "centre":
        return n_slices // 2
    if isinstance(slice_position, (int, np.integer)) and not isinstance(slice_position, bool):
        if -n_slices <= slice_position < n_slices:
            return int(slice_position) % n_slices
        raise ValueError(f"slice_position {slice_position} is out of range for a window of {n_slices} slices")
    raise ValueError(f"slice_position must be 'centre' or a slice index, got {slice_position!r}")


def compute_cams(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    subtypes: Sequence[str | int],
    *,
    slice_position: str | int = "centre",
) -> CamResult:
    """Compute one Grad-CAM map per image for the subtype named beside it.

    Parameters
    ----------
    model
        A model from ``ichlab.models.build_model``: "2d", "2.5d" or "lstm".
    images
        Model inputs with windows in [0, 1]: (B, 3, H, W) for 2D, (B, 9, H, W) for 2.5D,
        (B, K, 3, H, W) for the LSTM path.
    subtypes
        One subtype name or index per image. The caller names the class to explain:
        the top logit is never chosen silently.
    slice_position
        For a (B, K, 3, H, W) input: the slice of the window whose backbone activations
        give the map, ``"centre"`` (slice K // 2) or an index in [-K, K).
        Only ``"centre"`` is accepted for 4-D inputs.

    Returns
    -------
    CamResult
        ``maps`` (B, H, W) float32 in [0, 1] and ``empty`` (B,) bool, with ``empty`` maps all zero.

    Raises
    ------
    ValueError
        If ``subtypes`` has another length than the batch, names an unknown subtype, or the
        input has the wrong number of dimensions.

    Notes
    -----
    The model's train/eval mode, requires_grad flags and stored gradients are the same
    after the call as before. On CUDA, cuDNN is off during the pass for models with an LSTM.
    """
    images = torch.as_tensor(images, dtype=torch.float32).detach()
    targets = subtype_indices(subtypes, len(images))
    device = next(model.parameters()).device

    if images.ndim == 5:
        n_slices = images.shape[1]
        position = _resolve_position(slice_position, n_slices)
        cam_model: nn.Module = SequenceAsChannels(model, n_slices)
        reshape_transform = slice_reshape_transform(n_slices, position)
        images = images.reshape(images.shape[0], -1, *images.shape[3:])  # (B, K*3, H, W)
    elif images.ndim == 4:
        if slice_position != "centre":
            raise ValueError(
                f"slice_position={slice_position!r} applies to (B, K, 3, H, W) sequence inputs; "
                f"this input has shape {tuple(images.shape)}"
            )
        cam_model = model
        reshape_transform = None
    else:
        raise ValueError(
            f"images must be (B, C, H, W) or (B, K, 3, H, W), got shape {tuple(images.shape)}"
        )

    with preserved_model_state(model), _cudnn_context(model, device):
        cam = _GradCAMWithPeaks(cam_model, [target_layer(model)], reshape_transform=reshape_transform)
        cam.compute_input_gradient = True  # activations need gradients while parameters are frozen
        try:
            maps = cam(images, [ClassifierOutputTarget(index) for index in targets])  # (B, H, W)
            peaks, scales = cam.peaks, cam.scales
            n_calls = len(cam.activations_and_grads.activations)
        finally:
            cam.activations_and_grads.release()
    if n_calls != 1:
        raise RuntimeError(
            f"the target layer ran {n_calls} times in one forward pass; the CAM would mix feature "
            "maps from different calls, so ichlab supports only models that run the backbone once per batch"
        )

    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    maps = np.clip(maps, 0.0, 1.0)
    empty = (peaks <= EMPTY_RELATIVE_PEAK * scales) | (maps.reshape(len(maps), -1).max(axis=1) <= 0.0)
    maps[empty] = 0.0
    if empty.any():
        logger.info("%d of %d CAM maps are empty (no positive evidence for the subtype)", empty.sum(), len(maps))
    return CamResult(
        maps=maps,
        empty=empty,
        subtypes=targets,
        peaks=peaks.astype(np.float32),
        scales=scales.astype(np.float32),
    )


def compute_window_cams(model: nn.Module, windows: torch.Tensor | np.ndarray, subtypes: Sequence[str | int]) -> CamResult:
    """Compute the LSTM path's maps for every slice of each window.

    Parameters
    ----------
    windows
        (B, K, 3, H, W) sequence inputs.

    Returns
    -------
    CamResult
        ``maps`` (B, K, H, W), and ``empty``, ``peaks`` and ``scales`` (B, K): slice k of each window explained
        through the backbone's activations of that slice. Each map is normalised on its own.
    """
    windows = torch.as_tensor(windows, dtype=torch.float32)
    if windows.ndim != 5:
        raise ValueError(f"windows must be (B, K, 3, H, W), got shape {tuple(windows.shape)}")
    per_slice = [compute_cams(model, windows, subtypes, slice_position=k) for k in range(windows.shape[1])]
    return CamResult(
        maps=np.stack([result.maps for result in per_slice], axis=1),  # (B, K, H, W)
        empty=np.stack([result.empty for result in per_slice], axis=1),  # (B, K)
        subtypes=per_slice[0].subtypes,
        peaks=np.stack([result.peaks for result in per_slice], axis=1),  # (B, K)
        scales=np.stack([result.scales for result in per_slice], axis=1),  # (B, K)
    )


def cache_inputs(cache, rows: Sequence[int] | np.ndarray, arch: str, context_slices: int = 3) -> torch.Tensor:
    """Build the model input of each cache row exactly as the evaluation datasets do.

    The inputs come from ``ichlab.datasets.SliceDataset`` without augmentation: the K slices
    centred on the row, with the end slices of its series repeated, in three windows.

    Parameters
    ----------
    cache
        A ``SliceCache``.
    rows
        Cache row numbers.
    arch
        ``"2d"`` gives (B, 3, S, S), ``"2.5d"`` (B, 3K, S, S) and ``"lstm"`` (B, K, 3, S, S).
    context_slices
        K, the odd number of slices in a 2.5D or LSTM window.
    """
    from ichlab.datasets import ARCH_INPUT_KINDS, SliceDataset

    if arch not in ARCH_INPUT_KINDS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCH_INPUT_KINDS)}")
    # With no split, dataset item i is cache row i.
    dataset = SliceDataset(cache, None, input_kind=ARCH_INPUT_KINDS[arch], context_slices=context_slices)
    images = [dataset[int(row)]["image"] for row in np.asarray(rows, dtype=np.int64)]
    return torch.stack(images)  # (B, 3, S, S), (B, 3K, S, S) or (B, K, 3, S, S)


# Figures and scores live beside this module; they are re-exported so that ``ichlab.cam``
# stays the one name to import.
from ichlab.cam_explorer import cam_explorer, explorer_figure  # noqa: E402
from ichlab.cam_figures import (  # noqa: E402
    compare_models_figure,
    overlay_cam,
    save_overlay,
    save_subtype_figure,
    subtype_figure,
    window_figure,
)
from ichlab.cam_scoring import (  # noqa: E402
    cam_scores_per_slice,
    score_cams,
    score_maps,
    scores_to_markdown,
)

# The main job's name for score_cams.
score_models = score_cams
