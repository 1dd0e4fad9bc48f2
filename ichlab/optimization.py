"""The pieces of optimisation the training loop uses: loss weights, schedule, precision.

Hemorrhage subtypes are rare (epidural is about 0.5% of RSNA slices), so the BCE loss
weighs each class's positives by its negative-to-positive ratio in the training labels.
The learning rate rises linearly during a warm-up, then follows a cosine to zero.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ichlab import SUBTYPES

logger = logging.getLogger(__name__)


def training_labels(loader: DataLoader) -> np.ndarray:
    """Return the labels (N, 5) of every labelled slice the loader's dataset holds.

    Uses the dataset's ``labels`` array (indexed by its ``rows`` or by its cache split
    when present, as ``ichlab.datasets`` provides) and otherwise reads one pass of batches.
    """
    dataset = loader.dataset
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, np.asarray(dataset.indices)

    labels = getattr(dataset, "labels", None)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.float32)
        if hasattr(dataset, "rows"):
            labels = labels[np.asarray(dataset.rows)]
        elif hasattr(dataset, "cache") and hasattr(dataset, "split"):
            labels = labels[np.asarray(dataset.cache.rows(dataset.split))]
        if indices is not None and len(labels) == len(dataset):
            labels = labels[indices]
        return labels.reshape(-1, labels.shape[-1])

    logger.info("the training dataset has no labels array: reading the labels from one pass over the loader")
    collected = []
    for batch in loader:
        batch_labels = batch["labels"]
        if "valid" in batch:
            batch_labels = batch_labels[batch["valid"]]
        collected.append(batch_labels.reshape(-1, batch_labels.shape[-1]).numpy())
    return np.concatenate(collected)


def class_weights_from_labels(labels: np.ndarray) -> torch.Tensor:
    """Return BCE positive weights per class: negatives / positives in ``labels`` (N, C).

    A class without positives gets weight 1 and a warning, since its ratio is undefined.
    """
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum(axis=0)
    negatives = len(labels) - positives
    weights = np.ones(labels.shape[1])
    for column, (positive, negative) in enumerate(zip(positives, negatives)):
        name = SUBTYPES[column] if column < len(SUBTYPES) else f"class {column}"
        if positive == 0:
            logger.warning("no training slice is positive for %s: its loss weight stays 1", name)
            continue
        weights[column] = negative / positive
    return torch.tensor(weights, dtype=torch.float32)


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Return the learning-rate factor per optimiser step for ``torch.optim.lr_scheduler.LambdaLR``.

    The factor rises linearly from ``1 / warmup_steps`` to 1 over ``warmup_steps`` steps,
    then follows half a cosine from 1 to 0 at ``total_steps``.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """Return the mixed-precision dtype: bf16 on CUDA GPUs that support it, else fp16 on CUDA, else None.

    fp16 needs a ``GradScaler`` so that small gradients do not underflow; bf16 has the
    float32 exponent range and needs none.
    """
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class EarlyStopping:
    """Track the lowest validation loss and report when ``patience`` epochs brought no new lowest one.

    A patience of 0 behaves as 1: training stops after the first epoch without improvement.
    """

    def __init__(self, patience: int, best_loss: float = math.inf, best_epoch: int = 0, epochs_without_improvement: int = 0):
        self.patience = max(1, int(patience))
        self.best_loss = best_loss
        self.best_epoch = best_epoch
        self.epochs_without_improvement = epochs_without_improvement

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record an epoch's validation loss; return True when it is the lowest so far."""
        if val_loss < self.best_loss:
            self.best_loss = val_loss
            self.best_epoch = epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row brought no lower validation loss."""
        return self.epochs_without_improvement >= self.patience

    def state_dict(self) -> dict[str, float]:
        """Return the state as plain numbers for a checkpoint."""
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
        }
