"""DistributedDataParallel training under torchrun: two CPU processes with the gloo backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ichlab.checkpoints import load_checkpoint, load_model
from ichlab.distributed import ProcessGroup, gather_shards

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from ichlab.config import get_config
    from ichlab.distributed import current_group, gather_shards
    from ichlab.models import build_model
    from ichlab.training import train

    torch.set_num_threads(1)
    run_dir = Path(sys.argv[1])


    class Slices(Dataset):
        def __init__(self, n_items, seed):
            generator = torch.Generator().manual_seed(seed)
            self.labels = (torch.rand(n_items, 5, generator=generator) < 0.4).float()
            self.labels[0] = 1.0
            self.labels[1] = 0.0
            self.images = torch.rand(n_items, 3, 32, 32, generator=generator)

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {"image": self.images[i], "labels": self.labels[i], "row": torch.tensor(i)}


    config = get_config("quick")
    config.train.epochs = 2
    config.train.device = "cpu"
    torch.manual_seed(0)
    model = build_model("2d")
    loaders = {
        "train": DataLoader(Slices(16, seed=0), batch_size=4, shuffle=True),
        "val": DataLoader(Slices(11, seed=1), batch_size=4),  # 11 items: uneven shards
    }
    history = train(model, loaders, config, run_dir / "run", progress=False)

    group = current_group()
    torch.save(model.state_dict(), run_dir / f"rank{group.rank}.pt")
    shard = np.arange(group.rank, 7 + 1, group.world_size)[:4]  # what an unshuffled sampler gives 7 items
    np.save(run_dir / f"gathered{group.rank}.npy", gather_shards(shard, 7, group))
    (run_dir / f"history{group.rank}.txt").write_text(repr([row["val_loss"] for row in history.rows]))
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_torchrun_two_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    environment = dict(os.environ, OMP_NUM_THREADS="1", ICHLAB_MODE="quick")
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(script), str(tmp_path),
    ]

    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "best.pt").is_file()
    assert (run_dir / "last.pt").is_file()
    assert (run_dir / "history.csv").is_file()

    # DDP keeps the processes' weights identical.
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, tensor in rank0.items():
        torch.testing.assert_close(rank1[name], tensor, rtol=0, atol=0, msg=name)

    # Both processes computed the same validation history.
    assert (tmp_path / "history0.txt").read_text() == (tmp_path / "history1.txt").read_text()

    # Shards gathered back into dataset order, without the sampler's padding.
    np.testing.assert_array_equal(np.load(tmp_path / "gathered0.npy"), np.arange(7))
    np.testing.assert_array_equal(np.load(tmp_path / "gathered1.npy"), np.arange(7))

    # The stored validation loss covers all 11 validation items: recompute it in one process.
    checkpoint = load_checkpoint(run_dir / "best.pt")
    assert len(checkpoint["rng"]) == 2
    best_epoch = checkpoint["early_stopping"]["best_epoch"]
    model = load_model(run_dir / "best.pt")
    generator = torch.Generator().manual_seed(1)
    labels = (torch.rand(11, 5, generator=generator) < 0.4).float()
    labels[0] = 1.0
    labels[1] = 0.0
    images = torch.rand(11, 3, 32, 32, generator=generator)
    train_generator = torch.Generator().manual_seed(0)
    train_labels = (torch.rand(16, 5, generator=train_generator) < 0.4).float()
    train_labels[0] = 1.0
    train_labels[1] = 0.0
    pos_weight = (16 - train_labels.sum(0)) / train_labels.sum(0)
    with torch.no_grad():
        logits = model(images)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
    stored = checkpoint["history"][best_epoch - 1]["val_loss"]
    assert stored == pytest.approx(float(expected), rel=1e-4)


def test_gather_shards_single_process():
    shard = np.arange(5)
    np.testing.assert_array_equal(gather_shards(shard, 5, ProcessGroup()), shard)
