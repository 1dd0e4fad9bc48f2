"""Running a model over a loader, and the per-class validation scores the history records."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ichlab import SUBTYPES

# The dataset input each model path reads, for batches of int16 HU windowed on the device.
INPUT_KINDS = {"2d": "2d", "2.5d": "2.5d", "lstm": "sequence"}


def to_device(batch: dict[str, torch.Tensor], device: torch.device, arch: str, channels_last: bool, *, augment: bool = False) -> dict[str, torch.Tensor]:
    """Move a dict batch to ``device``: int16 HU is windowed there, 4-D images go channels-last when asked.

    ``augment`` applies one random flip, rotation and scale per sample to int16 HU on the
    device before windowing (:func:`ichlab.datasets.augment_batch`); windowed images pass
    unchanged.
    """
    image = batch["image"].to(device, non_blocking=True)
    if image.dtype == torch.int16:
        from ichlab.datasets import augment_batch, window_batch

        hu = augment_batch(image) if augment else image  # (B, K, H, W) HU
        image = window_batch(hu, INPUT_KINDS[arch])  # windows in [0, 1]
    if channels_last and image.ndim == 4:
        image = image.contiguous(memory_format=torch.channels_last)

    moved = {
        "image": image,
        "labels": batch["labels"].to(device, non_blocking=True).float(),
        "row": batch["row"],
    }
    if "valid" in batch:
        moved["valid"] = batch["valid"].to(device, non_blocking=True)  # (B, M): False on chunk padding
    return moved


def labelled_outputs(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return logits and labels of the labelled slices only, as (N, 5).

    Series chunks give (B, M, 5) with a ``valid`` mask for the padding at a series end.
    """
    labels = batch["labels"]
    if "valid" in batch:
        return logits[batch["valid"]], labels[batch["valid"]]  # (N, 5)
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1, labels.shape[-1])


def run_inference(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    description: str = "predict",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``loader`` and return logits, labels and rows per item.

    Returns
    -------
    logits, labels, rows : np.ndarray
        Stacked in loader order with one entry per dataset item. Windows give (N, 5),
        (N, 5) and (N,). Series chunks give (N, M, 5), (N, M, 5) and (N, M), with row -1
        on padding.
    """
    arch = getattr(model, "arch", None) or getattr(getattr(model, "module", None), "arch", "2d")
    model.eval()
    logits, labels, rows = [], [], []
    with torch.no_grad(), tqdm(total=len(loader), desc=description, leave=False, disable=not progress) as bar:
        for batch in loader:  # not through the bar, which would open a second loader iterator
            bar.update(1)
            batch = to_device(batch, device, arch, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                output = model(batch["image"])  # (B, 5) or (B, M, 5)
            logits.append(output.float().cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
            row = batch["row"].cpu().numpy()
            if "valid" in batch:
                row = np.where(batch["valid"].cpu().numpy(), row, -1)
            rows.append(row)
    if not logits:
        raise ValueError(f"the {description} loader yielded no batches; its dataset is empty")
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(rows)


def keep_labelled(logits: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten per-item outputs to one row per labelled slice, dropping chunk padding (row -1)."""
    n_classes = logits.shape[-1]
    logits = logits.reshape(-1, n_classes)
    labels = labels.reshape(-1, n_classes)
    rows = rows.reshape(-1)
    keep = rows >= 0
    return logits[keep], labels[keep], rows[keep]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Return probabilities from logits, computed in float64 without overflow warnings."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


def validation_scores(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Return per-class ROC AUC and F1 at ``threshold``, and their means over classes.

    Parameters
    ----------
    labels, probabilities
        (N, 5), subtypes in ``ichlab.SUBTYPES`` order.

    Returns
    -------
    dict
        ``auc_<subtype>`` (NaN when the validation labels hold a single class),
        ``f1_<subtype>`` (0 when there are no positives and no positive predictions),
        ``mean_auc`` (over the defined AUCs) and ``mean_f1``.
    """
    scores: dict[str, float] = {}
    aucs, f1s = [], []
    for column, subtype in enumerate(SUBTYPES):
        truth = labels[:, column] >= 0.5
        if truth.all() or not truth.any():
            auc = float("nan")
        else:
            auc = float(roc_auc_score(truth, probabilities[:, column]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            f1 = float(f1_score(truth, probabilities[:, column] >= threshold, zero_division=0))
        scores[f"auc_{subtype}"] = auc
        scores[f"f1_{subtype}"] = f1
        aucs.append(auc)
        f1s.append(f1)

    defined = [auc for auc in aucs if not np.isnan(auc)]
    scores["mean_auc"] = float(np.mean(defined)) if defined else float("nan")
    scores["mean_f1"] = float(np.mean(f1s))
    return scores
