"""PyTorch datasets that read a ``SliceCache``: 2D, 2.5D and sequence inputs, and series chunks.

Every item is a dict with ``image``, ``labels`` and ``row`` (the cache row of each labelled
slice). Images are windowed into [0, 1] per item, or returned as int16 HU
(``window_on_device=True``) so that :func:`window_batch` windows a whole batch on the
training device. The loaders of :func:`make_loaders` send int16 HU, a sixth of the bytes of a
windowed 2.5D item, and the training loop augments and windows each batch where the model
runs. Datasets pickle as the cache path plus a few small arrays, so DataLoader workers
started with spawn (macOS, Windows) reopen the memory map instead of copying it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ichlab.windows import CHANNEL_ORDER, WINDOWS, stack_windows

INPUT_KINDS = ("2d", "2.5d", "sequence")
# The dataset input each model path consumes.
ARCH_INPUT_KINDS = {"2d": "2d", "2.5d": "2.5d", "lstm": "sequence"}

AIR_HU = -1024.0  # fill for pixels that augmentation moves in from outside the image
MAX_ROTATION_DEGREES = 10.0
SCALE_RANGE = (0.9, 1.1)


def random_affine_matrices(batch_size: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Draw one random left-right flip, rotation and scale per sample.

    Rotations are uniform in +-``MAX_ROTATION_DEGREES``, scales uniform in ``SCALE_RANGE``
    and flips have probability 0.5. Returns (B, 2, 3) float32 matrices for
    ``torch.nn.functional.affine_grid`` (output to input coordinates, in [-1, 1] units).
    """
    uniform = torch.rand((batch_size, 3), generator=generator).to(device)  # (B, 3)
    angle = (uniform[:, 0] * 2 - 1) * math.radians(MAX_ROTATION_DEGREES)
    scale = SCALE_RANGE[0] + uniform[:, 1] * (SCALE_RANGE[1] - SCALE_RANGE[0])
    flip = torch.where(uniform[:, 2] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(angle)
    return torch.stack(
        [torch.stack([flip * cos, -sin, zero], dim=1), torch.stack([flip * sin, cos, zero], dim=1)], dim=1
    )  # (B, 2, 3)


def warp(images: torch.Tensor, matrices: torch.Tensor, *, fill: float = AIR_HU, nearest: bool = False) -> torch.Tensor:
    """Apply one affine matrix per sample to every channel of that sample.

    Parameters
    ----------
    images
        (B, C, H, W): the C slices (or mask channels) of one sample share its transform.
    matrices
        (B, 2, 3) from :func:`random_affine_matrices`.
    fill
        Value for pixels coming from outside the image (air for HU, 0 for masks).
    nearest
        Nearest-neighbour sampling, for masks; otherwise bilinear.

    Returns
    -------
    torch.Tensor
        (B, C, H, W) float32.
    """
    images = images.float()
    grid = F.affine_grid(matrices.to(images.device), list(images.shape), align_corners=False)  # (B, H, W, 2)
    # grid_sample pads with zeros, so sample (image - fill) and add fill back.
    warped = F.grid_sample(images - fill, grid, mode="nearest" if nearest else "bilinear", align_corners=False)
    return warped + fill


def augment_batch(hu: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a HU batch on its device: one random flip, rotation and scale per sample.

    ``hu`` is (B, K, H, W), for example from a dataset made with ``window_on_device=True``;
    the K slices of a sample share its transform. Returns (B, K, H, W) float32 HU for
    :func:`window_batch`. The training loop calls it for int16 batches when
    ``config.train.augment`` is set, so that on a GPU the warp runs there, not per item in
    the loader workers.
    """
    matrices = random_affine_matrices(hu.shape[0], generator=generator, device=hu.device)  # (B, 2, 3)
    return warp(hu, matrices)


def window_batch(hu: torch.Tensor, input_kind: str) -> torch.Tensor:
    """Window an int16 HU batch on its device into the model input of ``input_kind``.

    Parameters
    ----------
    hu
        (B, K, H, W) HU from a dataset made with ``window_on_device=True`` (K is 1 for 2D);
        move it to the device first.
    input_kind
        ``"2d"``, ``"2.5d"`` or ``"sequence"``.

    Returns
    -------
    torch.Tensor
        float32 in [0, 1]: (B, 3, H, W), (B, 3K, H, W) or (B, K, 3, H, W). The values equal
        those of :func:`ichlab.windows.stack_windows`.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
    if hu.ndim != 4:
        raise ValueError(f"expected an HU batch shaped (B, K, H, W), got shape {tuple(hu.shape)}")
    if input_kind == "2d" and hu.shape[1] != 1:
        raise ValueError(f"a 2d batch has one slice per sample, got K = {hu.shape[1]}; use input_kind '2.5d' or 'sequence'")
    if hu.device.type != "cpu":
        windows = stack_windows(hu.float(), CHANNEL_ORDER)  # (B, K, 3, H, W)
        return _shape_for(windows, input_kind)

    # On a CPU, sample by sample, so that each sample's slices stay in the processor cache
    # while the three windows are written.
    batch_size, k, height, width = hu.shape
    windows = torch.empty((batch_size, k, len(CHANNEL_ORDER), height, width), dtype=torch.float32)
    for sample in range(batch_size):
        _window_into(hu[sample].float(), windows[sample])
    return _shape_for(windows, input_kind)


def _window_into(hu: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write the ``CHANNEL_ORDER`` windows of float HU (K, H, W) into ``out`` (K, 3, H, W).

    The same arithmetic as ``apply_window``, so the values are equal, but written in place:
    one output array instead of a temporary per window and a stacking copy. On a 2-core CPU
    this halved the time to window a 2.5D batch of 16 at 224 px (from 9.9 ms to 4.4 ms).
    """
    for channel, name in enumerate(CHANNEL_ORDER):
        center, width = WINDOWS[name]
        target = out[:, channel]  # (K, H, W)
        torch.sub(hu, center - width / 2.0, out=target)
        target.div_(width).clamp_(0.0, 1.0)
    return out


def _shape_for(windows: torch.Tensor, input_kind: str) -> torch.Tensor:
    # windows: (..., K, 3, H, W)
    if input_kind == "2d":
        return windows[..., 0, :, :, :]  # (..., 3, H, W)
    if input_kind == "2.5d":
        return windows.flatten(-4, -3)  # (..., 3K, H, W): slice-major, windows within a slice
    return windows  # (..., K, 3, H, W)


class _CacheDataset(Dataset):
    """Shared state: the cache, its rows and labels; neighbour tables are rebuilt after unpickling."""

    def __init__(self, cache, split, context_slices, augment, window_on_device, return_masks):
        if context_slices < 1 or context_slices % 2 == 0:
            raise ValueError(f"context_slices must be an odd positive number, got {context_slices}")
        if return_masks and cache.masks is None:
            raise ValueError(f"the cache in {cache.path} has no lesion masks; build it from generated data to get them")
        self.cache = cache
        self.split = split
        self.context_slices = context_slices
        self.augment = augment
        self.window_on_device = window_on_device
        self.return_masks = return_masks
        self.labels = cache.labels  # (N, 5) float32

    def _read(self, rows: np.ndarray, centre: int) -> dict:
        hu = torch.from_numpy(np.asarray(self.cache.hu[rows]))  # (K, H, W) int16, copied out of the map
        masks = torch.from_numpy(np.array(self.cache.masks[centre])) if self.return_masks else None  # (5, H, W)
        if self.augment:
            matrix = random_affine_matrices(1)
            hu = warp(hu[None], matrix)[0]  # (K, H, W) float32
            if masks is not None:
                masks = warp(masks[None], matrix, fill=0.0, nearest=True)[0].to(torch.uint8)
        item = {}
        if self.window_on_device:
            item["image"] = hu.round().to(torch.int16) if hu.is_floating_point() else hu  # (K, H, W) int16
        else:
            item["image"] = window_batch(hu[None], "sequence")[0]  # (K, 3, H, W)
        if masks is not None:
            item["masks"] = masks.bool()  # (5, H, W)
        return item


class SliceDataset(_CacheDataset):
    """One labelled slice per item, with its neighbours as the input kind needs.

    Parameters
    ----------
    cache
        A ``SliceCache``.
    split
        ``"train"``, ``"val"``, ``"test"``, or None for every row.
    input_kind
        ``"2d"``: image (3, H, W). ``"2.5d"``: (3K, H, W), the K slices centred on this one
        (previous, current, next for K = 3), three windows each. ``"sequence"``:
        (K, 3, H, W). Neighbours beyond a series end repeat the edge slice.
    context_slices
        K, odd. Ignored for ``"2d"``.
    augment
        Apply one random flip, rotation and scale to every slice of the sample alike.
    window_on_device
        Return ``image`` as (K, H, W) int16 HU (K = 1 for 2D) for :func:`window_batch`.
    return_masks
        Add ``masks``: (5, H, W) bool lesion masks of the labelled slice (generated data).

    Items are dicts: ``image``, ``labels`` (5,) float32, ``row`` int64.
    """

    def __init__(self, cache, split, input_kind="2d", context_slices=3, augment=False, window_on_device=False, return_masks=False):
        if input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")
        k = 1 if input_kind == "2d" else context_slices
        super().__init__(cache, split, context_slices, augment, window_on_device, return_masks)
        self.input_kind = input_kind
        self.k = k
        self.rows = cache.rows(split)
        self._neighbours = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_neighbours"] = None  # (N, K) table; rebuilt in the worker
        return state

    def __getitem__(self, i: int) -> dict:
        if self._neighbours is None:
            self._neighbours = self.cache.neighbour_rows(self.k)
        row = int(self.rows[i])
        item = self._read(self._neighbours[row], row)
        if not self.window_on_device:
            item["image"] = _shape_for(item["image"], self.input_kind)
        item["labels"] = torch.from_numpy(self.labels[row])  # (5,)
        item["row"] = torch.tensor(row, dtype=torch.int64)
        return item


class SeriesChunkDataset(_CacheDataset):
    """Consecutive slices of one series, for a model that embeds each slice once.

    A series is cut into chunks of ``chunk_size`` slices; each item contains its chunk plus
    K//2 slices of context at each end (edge slices repeat at a series end), so window j of
    the chunk is ``image[j : j + K]``. The last chunk of a series is padded to
    ``chunk_size``: its padding has ``valid`` False, ``row`` -1 and zero labels.

    Items are dicts: ``image`` (chunk_size + K - 1, 3, H, W) float32, or (chunk_size + K - 1,
    H, W) int16 with ``window_on_device``; ``labels`` (chunk_size, 5) float32; ``row``
    (chunk_size,) int64; ``valid`` (chunk_size,) bool.
    """

    def __init__(self, cache, split, chunk_size=32, context_slices=3, augment=False, window_on_device=False):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        super().__init__(cache, split, context_slices, augment, window_on_device, return_masks=False)
        self.chunk_size = chunk_size
        rows = cache.rows(split)
        starts, lengths = (bound[rows] for bound in cache.series_bounds())
        first_rows = np.unique(np.c_[starts, lengths], axis=0)  # one (start, length) per series
        self.chunks = np.array(
            [(start, offset, length) for start, length in first_rows for offset in range(0, length, chunk_size)],
            dtype=np.int64,
        ).reshape(-1, 3)  # (n_chunks, 3): series start row, first position, series length

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        start, offset, length = (int(value) for value in self.chunks[i])
        half = self.context_slices // 2
        positions = np.arange(offset - half, offset + self.chunk_size + half)  # (chunk + K - 1,)
        item = self._read(start + np.clip(positions, 0, length - 1), start)

        own = np.arange(offset, offset + self.chunk_size)  # (chunk,)
        valid = own < length
        rows = np.where(valid, start + own, -1)
        labels = np.zeros((self.chunk_size, self.labels.shape[1]), dtype=np.float32)
        labels[valid] = self.labels[rows[valid]]
        item["labels"] = torch.from_numpy(labels)  # (chunk, 5)
        item["row"] = torch.from_numpy(rows.astype(np.int64))  # (chunk,)
        item["valid"] = torch.from_numpy(valid)  # (chunk,)
        return item


def make_loaders(cache, arch: str, config, *, augment: bool | None = None, window_on_device: bool = True) -> dict[str, DataLoader]:
    """Build the train, val and test DataLoaders for one model path.

    Parameters
    ----------
    cache
        A ``SliceCache``.
    arch
        ``"2d"``, ``"2.5d"`` or ``"lstm"`` (the LSTM path reads ``"sequence"`` items).
    config
        ``config.train.batch_size``, ``config.train.seed``, ``config.data.num_workers`` and
        ``config.data.context_slices`` are used.
    augment
        Augment the train split in the loader. None (the default) does so only for windowed
        batches (``window_on_device=False``) when ``config.train.augment`` is set: int16
        batches are augmented by the training loop on its device (:func:`augment_batch`),
        which on a GPU costs a few kernels instead of a warp per item in the workers.
    window_on_device
        Batches carry int16 HU, (B, K, H, W), which the training loop windows with
        :func:`window_batch` where the model runs (the default, on a CPU as on a GPU);
        False gives windowed float32 images instead. An int16 2.5D batch is a sixth of the
        bytes of a windowed one, and docs/BENCHMARKS.md shows it is the faster loader on a
        CPU too.

    Returns
    -------
    dict
        ``"train"`` (shuffled with a generator seeded from ``config.train.seed``), ``"val"``
        and ``"test"`` (in cache order).
    """
    if arch not in ARCH_INPUT_KINDS:
        raise ValueError(f"arch must be one of {', '.join(ARCH_INPUT_KINDS)}, got {arch!r}")
    if augment is None:
        augment = bool(getattr(config.train, "augment", False)) and not window_on_device
    workers = int(config.data.num_workers)
    loaders = {}
    for split in ("train", "val", "test"):
        dataset = SliceDataset(
            cache,
            split,
            input_kind=ARCH_INPUT_KINDS[arch],
            context_slices=config.data.context_slices,
            augment=augment and split == "train",
            window_on_device=window_on_device,
        )
        generator = torch.Generator().manual_seed(int(config.train.seed)) if split == "train" else None
        loaders[split] = DataLoader(
            dataset,
            batch_size=config.train.batch_size,
            shuffle=split == "train",
            generator=generator,
            num_workers=workers,
            # Workers restart each epoch: persistent ones make a resumed run draw its
            # worker seeds at other points than an uninterrupted one.
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
    return loaders
