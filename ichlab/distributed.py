"""Several processes, one model: DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node=N -m ichlab.cli train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each process trains on its own shard of the
training set (a ``DistributedSampler``). Gradients are averaged across processes after
every backward pass, so all processes keep the same weights. Validation is sharded as
well and the shards are gathered back into dataset order, so every process computes the
same metrics and takes the same early-stopping decision. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a run: its rank, the number of processes, its local GPU index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for the process that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Return True when ``torchrun`` (or another launcher) set ``WORLD_SIZE`` above 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str | None = None) -> ProcessGroup:
    """Join the process group that ``torchrun`` describes in the environment.

    Parameters
    ----------
    backend
        ``"nccl"`` or ``"gloo"``; default: nccl when CUDA is available, else gloo.

    Returns
    -------
    ProcessGroup
        Rank 0 of 1 when the process was not started by ``torchrun``.
    """
    if dist.is_available() and dist.is_initialized():
        return current_group()
    if not launched_by_torchrun():
        return ProcessGroup()

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    group = current_group()
    logger.info("joined process group: rank %d of %d (%s)", group.rank, group.world_size, backend)
    return group


def current_group() -> ProcessGroup:
    """Return this process's rank and world size (rank 0 of 1 outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ProcessGroup()
    return ProcessGroup(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def shard_loader(loader: DataLoader, group: ProcessGroup, *, shuffle: bool, seed: int) -> DataLoader:
    """Return a copy of ``loader`` whose sampler gives this process its shard of the dataset.

    The batch size stays per process, so the global batch is ``world_size`` times larger.
    """
    if loader.batch_size is None:
        raise ValueError("a loader with a custom batch sampler cannot be sharded; pass batch_size instead")
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=group.world_size,
        rank=group.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        multiprocessing_context=loader.multiprocessing_context,
    )


def gather_shards(shard: np.ndarray, n_items: int, group: ProcessGroup) -> np.ndarray:
    """Gather per-process results of an unshuffled ``DistributedSampler`` back into dataset order.

    Parameters
    ----------
    shard
        This process's results, one row per item of its shard (ranks take every
        ``world_size``-th item; the sampler pads the last round by repeating items).
    n_items
        The dataset's length; the padding beyond it is dropped.
    """
    if not group.distributed:
        return shard
    shards: list[np.ndarray | None] = [None] * group.world_size
    dist.all_gather_object(shards, shard)

    rounds = max(len(part) for part in shards)
    ordered = []
    for position in range(rounds):
        for part in shards:
            if position < len(part):
                ordered.append(part[position])
    return np.stack(ordered[:n_items])


def average_across_processes(value: float, group: ProcessGroup) -> float:
    """Return the mean of ``value`` over all processes (the value itself in a single process)."""
    if not group.distributed:
        return value
    device = torch.device("cuda", group.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / group.world_size


def barrier(group: ProcessGroup) -> None:
    """Wait until every process arrives (no-op in a single process)."""
    if group.distributed:
        dist.barrier()


def gather_objects(value, group: ProcessGroup) -> list:
    """Return ``value`` from every process, in rank order (a one-item list in a single process)."""
    if not group.distributed:
        return [value]
    values: list = [None] * group.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(model: torch.nn.Module, group: ProcessGroup) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process.

    DDP synchronises buffers at the start of each training forward pass, but that pass then
    updates each process's running statistics with its own batch. Without this copy, each
    validation shard would be scored with slightly different statistics.
    """
    if not group.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)
