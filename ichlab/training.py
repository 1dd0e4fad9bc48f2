"""The training loop shared by the three paths, and prediction with a trained model.

One plain loop a student can follow. It uses AdamW with a linear warm-up and a cosine
decay, and BCE with logits weighted per class by the training labels' imbalance. It runs
in mixed precision on CUDA with channels-last memory. It writes a checkpoint after every
epoch (``last.pt``) and at every new lowest validation loss (``best.pt``), stops early,
and resumes exactly from ``last.pt``. Under
``torchrun`` the same loop trains with DistributedDataParallel (see :mod:`ichlab.distributed`).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ichlab import SUBTYPES
from ichlab.checkpoints import (
    BEST_NAME,
    LAST_NAME,
    capture_rng_state,
    check_same_model,
    load_checkpoint,
    load_model,
    restore_rng_state,
    save_checkpoint,
)
from ichlab.config import Config
from ichlab.history import History
from ichlab.distributed import (
    ProcessGroup,
    average_across_processes,
    barrier,
    broadcast_buffers,
    current_group,
    gather_objects,
    gather_shards,
    init_distributed,
    shard_loader,
)
from ichlab.optimization import EarlyStopping, autocast_dtype, class_weights_from_labels, training_labels, warmup_cosine
from ichlab.validation import keep_labelled, labelled_outputs, run_inference, sigmoid, to_device, validation_scores

logger = logging.getLogger(__name__)

HISTORY_NAME = "history.csv"

__all__ = ["History", "load_checkpoint", "load_model", "make_loaders_for", "make_series_loaders", "predict", "select_device", "train"]


def select_device(requested: str = "auto") -> torch.device:
    """Return the training device: for ``"auto"``, CUDA, then Apple MPS, then the CPU.

    Under ``torchrun`` each process takes the GPU of its ``LOCAL_RANK``.

    Raises
    ------
    ValueError
        If ``requested`` is not auto, cuda, mps or cpu, or names a missing device.
    """
    mps_available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif mps_available:
            requested = "mps"
        else:
            requested = "cpu"

    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use 'auto' or 'cpu'")
        return torch.device("cuda", current_group().local_rank)
    if requested == "mps" and not mps_available:
        raise ValueError("device 'mps' requested but Apple MPS is not available; use 'auto' or 'cpu'")
    if requested not in ("mps", "cpu"):
        raise ValueError(f"device {requested!r} is not one of auto, cuda, mps, cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """Seed the torch, NumPy and Python random generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def train_one_epoch(network, loader, criterion, optimizer, scheduler, scaler, device, amp_dtype, settings, *, arch, augment, description, progress) -> float:
    """Run one pass over the training loader and return the mean training loss per labelled slice.

    ``augment`` augments int16 HU batches on ``device`` before windowing.
    """
    network.train()
    loss_sum = torch.zeros((), device=device)
    n_slices = 0
    # The bar counts batches but never iterates the loader: tqdm.auto's bar calls iter() on
    # what it wraps, and each extra DataLoader iterator draws a seed and prefetches batches.
    bar = tqdm(total=len(loader), desc=description, leave=False, disable=not progress)
    for step, batch in enumerate(loader):
        bar.update(1)
        batch = to_device(batch, device, arch, settings.channels_last, augment=augment)

        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = network(batch["image"])  # (B, 5), or (B, M, 5) for series chunks
        logits, labels = labelled_outputs(logits.float(), batch)  # (N, 5): the loss runs in float32
        loss = criterion(logits, labels)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # the scale factor is 1 unless fp16 needs it
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()

        loss_sum += loss.detach() * len(labels)
        n_slices += len(labels)
        if step % 10 == 0 or step == len(loader) - 1:
            bar.set_postfix(loss=f"{loss_sum.item() / max(n_slices, 1):.4f}")
    bar.close()
    return loss_sum.item() / max(n_slices, 1)


def validate(model, loader, criterion, device, amp_dtype, channels_last, group: ProcessGroup) -> tuple[float, dict[str, float]]:
    """Return the weighted validation loss and per-class scores, over all processes' shards."""
    logits, labels, rows = run_inference(
        model, loader, device, amp_dtype=amp_dtype, channels_last=channels_last, description="validation"
    )
    n_items = len(loader.dataset)
    logits = gather_shards(logits, n_items, group)
    labels = gather_shards(labels, n_items, group)
    rows = gather_shards(rows, n_items, group)
    logits, labels, _ = keep_labelled(logits, labels, rows)  # (N, 5) each

    pos_weight = criterion.pos_weight.cpu() if criterion.pos_weight is not None else None
    loss = nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(labels), pos_weight=pos_weight
    )
    return float(loss), validation_scores(labels, sigmoid(logits))


def train(
    model: nn.Module,
    loaders: dict[str, DataLoader],
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> History:
    """Train ``model`` on ``loaders["train"]`` and validate on ``loaders["val"]`` after each epoch.

    Parameters
    ----------
    model
        From :func:`ichlab.models.build_model`. It is trained in place; on return it
        holds the best epoch's weights, in eval mode, on the training device.
    loaders
        ``"train"`` and ``"val"`` DataLoaders of dict batches: ``image``, ``labels`` (B, 5)
        float32 and ``row`` (B,); series chunks add a chunk axis and a ``valid`` mask.
    config
        The run configuration. ``config.train`` sets epochs, learning rate, weight decay,
        warm-up, patience, seed, device, mixed precision and channels-last; the batch size
        is the loaders'.
    run_dir
        Folder for ``best.pt``, ``last.pt`` and ``history.csv``; created when missing.
    resume
        Continue from ``run_dir/last.pt`` when it exists; the result equals an
        uninterrupted run on the same device and settings.
    progress
        Show a progress bar per epoch with the running loss.

    Returns
    -------
    History
        One row per epoch; ``best_epoch`` is the epoch saved as ``best.pt``.
    """
    settings = config.train
    run_dir = Path(run_dir)
    group = init_distributed()  # joins the torchrun process group, or rank 0 of 1 without torchrun
    device = select_device(settings.device)
    amp_dtype = autocast_dtype(device, settings.amp)
    arch = getattr(model, "arch", "2d")
    progress = progress and group.is_main
    if group.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        logger.info(
            "training the %s model on %s, mixed precision %s, %d process(es), run folder %s",
            arch, device, amp_dtype or "off", group.world_size, run_dir,
        )
    seed_everything(settings.seed + group.rank)

    # Data: under torchrun each process reads its own shard of the training and validation sets.
    train_loader, val_loader = loaders["train"], loaders["val"]
    if group.distributed:
        train_loader = shard_loader(train_loader, group, shuffle=True, seed=settings.seed)
        val_loader = shard_loader(val_loader, group, shuffle=False, seed=settings.seed)

    # Augmentation: int16 HU batches are augmented here, on the training device. A loader
    # that already augments or windows its items is left as it is.
    dataset = train_loader.dataset
    augment_on_device = bool(getattr(settings, "augment", False)) and getattr(dataset, "window_on_device", False) and not getattr(dataset, "augment", False)
    if augment_on_device and group.is_main:
        logger.info("augmenting training batches on %s: one random flip, rotation and scale per sample", device)

    # Model: channels-last suits convolutions; DDP averages the gradients of all processes.
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    network = model
    if group.distributed:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # Loss: positives of rare classes weigh more, by the negative-to-positive ratio.
    pos_weight = class_weights_from_labels(training_labels(loaders["train"]))
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device))
    if group.is_main:
        weights = ", ".join(f"{name} {weight:.1f}" for name, weight in zip(SUBTYPES, pos_weight.tolist()))
        logger.info("positive class weights: %s", weights)

    # Optimiser and schedule: AdamW, linear warm-up, then a cosine decay over all planned steps.
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = len(train_loader)
    warmup_steps = max(1, round(settings.warmup_epochs * steps_per_epoch))
    scheduler = LambdaLR(optimizer, warmup_cosine(settings.epochs * steps_per_epoch, warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    shuffle_generator = getattr(train_loader.sampler, "generator", None)

    history = History()
    stopping = EarlyStopping(settings.patience)
    first_epoch = 1
    last_path = run_dir / LAST_NAME
    if resume and last_path.is_file():
        checkpoint = load_checkpoint(last_path)
        check_same_model(checkpoint, model, last_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        rng_states = checkpoint["rng"]
        restore_rng_state(rng_states[group.rank] if group.rank < len(rng_states) else rng_states[0])
        if shuffle_generator is not None and "shuffle_rng" in checkpoint:
            shuffle_generator.set_state(checkpoint["shuffle_rng"])
        stopping = EarlyStopping(settings.patience, **checkpoint["early_stopping"])
        history = History(rows=list(checkpoint["history"]), best_epoch=stopping.best_epoch)
        first_epoch = checkpoint["epoch"] + 1
        if group.is_main:
            logger.info("resuming from %s after epoch %d", last_path, checkpoint["epoch"])
    elif resume and group.is_main:
        logger.info("no %s in %s: starting a new run", LAST_NAME, run_dir)

    for epoch in range(first_epoch, settings.epochs + 1):
        if stopping.should_stop:
            break  # the run had stopped early before it was resumed
        started = time.perf_counter()
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a different shuffle per epoch, the same in every process

        train_loss = train_one_epoch(
            network, train_loader, criterion, optimizer, scheduler, scaler, device, amp_dtype, settings,
            arch=arch, augment=augment_on_device, description=f"epoch {epoch}/{settings.epochs}", progress=progress,
        )
        train_loss = average_across_processes(train_loss, group)
        broadcast_buffers(model, group)  # every process validates with rank 0's batch-norm statistics
        val_loss, scores = validate(model, val_loader, criterion, device, amp_dtype, settings.channels_last, group)

        improved = stopping.update(epoch, val_loss)
        history.best_epoch = stopping.best_epoch
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "learning_rate": scheduler.get_last_lr()[0],
            "seconds": time.perf_counter() - started,
            **scores,
        }
        history.rows.append(row)
        if group.is_main:
            logger.info(
                "epoch %d: training loss %.4f, validation loss %.4f, mean AUC %.3f, mean F1 %.3f%s",
                epoch, train_loss, val_loss, scores["mean_auc"], scores["mean_f1"], " (best)" if improved else "",
            )

        # Everything needed to continue: weights, optimiser, schedule, scaler, every process's RNG.
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "rng": gather_objects(capture_rng_state(), group),
            "config": {**config.to_dict(), "arch": arch, "build_kwargs": dict(getattr(model, "build_kwargs", {}))},
            "history": history.rows,
            "early_stopping": stopping.state_dict(),
        }
        if shuffle_generator is not None:
            checkpoint["shuffle_rng"] = shuffle_generator.get_state()
        if group.is_main:
            save_checkpoint(checkpoint, last_path)
            if improved:
                save_checkpoint(checkpoint, run_dir / BEST_NAME)
            pd.DataFrame(history.rows).to_csv(run_dir / HISTORY_NAME, index=False)
        barrier(group)
        if stopping.should_stop and epoch < settings.epochs:
            if group.is_main:
                logger.info("stopping early: no lower validation loss for %d epochs", stopping.patience)
            break

    last_epoch = history.rows[-1]["epoch"] if history.rows else 0
    history.stopped_early = stopping.should_stop and last_epoch < settings.epochs

    # Evaluation uses the epoch with the lowest validation loss.
    best = load_checkpoint(run_dir / BEST_NAME)
    model.load_state_dict(best["model"])
    model.eval()
    return history


def predict(model: nn.Module, loader: DataLoader, *, device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return sigmoid probabilities and cache rows for every labelled slice in ``loader``.

    Parameters
    ----------
    model
        A model from :func:`ichlab.models.build_model` or :func:`load_model`; it is moved
        to ``device`` and left in eval mode.
    loader
        Yields dict batches with ``image``, ``labels`` and ``row``; series chunks with a
        ``valid`` mask give one result per valid slice.
    device
        Where to run; default: :func:`select_device` with ``"auto"``.

    Returns
    -------
    probabilities : np.ndarray
        (N, 5) float32, subtypes in ``ichlab.SUBTYPES`` order.
    rows : np.ndarray
        (N,) int64 cache rows of the labelled slices, in loader order.
    """
    device = select_device() if device is None else torch.device(device)
    model.to(device)
    logits, labels, rows = run_inference(model, loader, device, amp_dtype=autocast_dtype(device))
    logits, _, rows = keep_labelled(logits, labels, rows)
    return sigmoid(logits).astype(np.float32), rows.astype(np.int64)


def make_series_loaders(cache, config: Config, *, chunk_size: int = 16) -> dict[str, DataLoader]:
    """Build train, val and test loaders of series chunks for the LSTM's series mode.

    Each item is a chunk of ``chunk_size`` labelled slices of one series with K // 2
    context slices at each end (``ichlab.datasets.SeriesChunkDataset``), so each slice is
    embedded once. The batch size is ``config.train.batch_size`` slices, rounded down to
    whole chunks (at least one).
    """
    from ichlab.datasets import SeriesChunkDataset

    chunks_per_batch = max(1, config.train.batch_size // chunk_size)
    loaders = {}
    for split in ("train", "val", "test"):
        dataset = SeriesChunkDataset(
            cache,
            split,
            chunk_size=chunk_size,
            context_slices=config.data.context_slices,
            window_on_device=True,  # int16 HU: the training loop augments and windows it on its device
        )
        generator = torch.Generator().manual_seed(int(config.train.seed)) if split == "train" else None
        loaders[split] = DataLoader(
            dataset,
            batch_size=chunks_per_batch,
            shuffle=split == "train",
            generator=generator,
            num_workers=int(config.data.num_workers),
            # Workers restart each epoch: persistent ones make a resumed run draw its
            # worker seeds at other points than an uninterrupted one.
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
    return loaders


def make_loaders_for(model: nn.Module, cache, config: Config, *, chunk_size: int = 16) -> dict[str, DataLoader]:
    """Return the loaders ``model`` trains on: series chunks for an LSTM in series mode, else windows."""
    if getattr(model, "series_mode", False):
        return make_series_loaders(cache, config, chunk_size=chunk_size)
    from ichlab.datasets import make_loaders

    return make_loaders(cache, model.arch, config)
