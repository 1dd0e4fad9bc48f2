"""Tests for the training loop, checkpoints, exact resumption and prediction, on tiny CPU runs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ichlab import SUBTYPES
from ichlab.checkpoints import load_checkpoint, load_model, save_checkpoint
from ichlab.config import get_config
from ichlab.models import build_model
from ichlab.optimization import EarlyStopping, class_weights_from_labels, training_labels, warmup_cosine
from ichlab.training import predict, select_device, train
from ichlab.validation import validation_scores

SIZE = 32  # pixels per side; tiny images keep each step well under a second on one core


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ToySlices(Dataset):
    """Random windowed images whose first label is marked by a bright square, as dict items.

    ``labels`` and ``rows`` mirror ``ichlab.datasets.SliceDataset``: labels of every cache
    row, and the cache rows this dataset serves. ``fail_after`` raises after that many
    items have been read, as a crash would.
    """

    def __init__(self, n_items, shape, seed, row_offset=0, fail_after=None):
        generator = torch.Generator().manual_seed(seed)
        labels = (torch.rand(n_items, 5, generator=generator) < 0.4).float()
        labels[0] = 1.0  # every class has a positive
        labels[1] = 0.0  # and a negative
        self.images = torch.rand(n_items, *shape, generator=generator) * 0.4
        self.images[labels[:, 0] == 1, ..., 8:24, 8:24] += 0.5
        self.labels = np.zeros((row_offset + n_items, 5), dtype=np.float32)
        self.labels[row_offset:] = labels.numpy()
        self.rows = np.arange(row_offset, row_offset + n_items)
        self.fail_after = fail_after
        self.reads = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise RuntimeError("simulated crash while reading a batch")
        row = int(self.rows[i])
        return {"image": self.images[i], "labels": torch.from_numpy(self.labels[row]), "row": torch.tensor(row)}


class ToyChunks(Dataset):
    """Chunks of consecutive slices with K // 2 context slices at each end, padded like SeriesChunkDataset."""

    def __init__(self, n_chunks, chunk_size, seed, n_valid_last):
        generator = torch.Generator().manual_seed(seed)
        self.chunk_size = chunk_size
        self.images = torch.rand(n_chunks, chunk_size + 2, 3, SIZE, SIZE, generator=generator)
        self.chunk_labels = (torch.rand(n_chunks, chunk_size, 5, generator=generator) < 0.4).float()
        self.valid = torch.ones(n_chunks, chunk_size, dtype=torch.bool)
        self.valid[-1, n_valid_last:] = False
        self.chunk_labels[~self.valid] = 0.0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        rows = torch.arange(i * self.chunk_size, (i + 1) * self.chunk_size)
        rows[~self.valid[i]] = -1
        return {"image": self.images[i], "labels": self.chunk_labels[i], "row": rows, "valid": self.valid[i]}


def tiny_config(epochs=2, **changes):
    config = get_config("quick")
    config.train.epochs = epochs
    config.train.learning_rate = 1e-3
    config.train.warmup_epochs = 0.5
    config.train.patience = 3
    config.train.device = "cpu"
    for name, value in changes.items():
        setattr(config.train, name, value)
    return config


def tiny_loaders(shape=(3, SIZE, SIZE), fail_after=None):
    train_set = ToySlices(16, shape, seed=0, fail_after=fail_after)
    val_set = ToySlices(10, shape, seed=1, row_offset=16)
    return {
        "train": DataLoader(train_set, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)),
        "val": DataLoader(val_set, batch_size=5),
    }


def fresh_model(arch="2d", seed=0, **options):
    torch.manual_seed(seed)
    return build_model(arch, **options)


def test_train_writes_run_folder(tmp_path):
    history = train(fresh_model(), tiny_loaders(), tiny_config(), tmp_path, progress=False)

    assert (tmp_path / "best.pt").is_file()
    assert (tmp_path / "last.pt").is_file()
    table = pd.read_csv(tmp_path / "history.csv")
    assert list(table["epoch"]) == [1, 2]
    expected_columns = ["train_loss", "val_loss", "learning_rate", "mean_auc", "mean_f1"]
    expected_columns += [f"auc_{name}" for name in SUBTYPES] + [f"f1_{name}" for name in SUBTYPES]
    for column in expected_columns:
        assert column in table.columns
    assert np.isfinite(table[["train_loss", "val_loss", "mean_auc"]].to_numpy()).all()
    assert history.table.shape[0] == 2
    assert history.best_epoch in (1, 2)
    assert not history.stopped_early


def test_checkpoint_loads_weights_only(tmp_path):
    model = fresh_model()
    train(model, tiny_loaders(), tiny_config(epochs=1), tmp_path, progress=False)

    checkpoint = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "rng", "config", "history", "early_stopping"):
        assert key in checkpoint
    assert checkpoint["epoch"] == 1
    assert checkpoint["config"]["arch"] == "2d"
    assert checkpoint["config"]["build_kwargs"] == model.build_kwargs
    assert checkpoint["config"]["mode"] == "quick"
    assert checkpoint["config"]["data"]["image_size"] == 128


def test_load_model_matches_trained(tmp_path):
    model = fresh_model("2.5d")
    loaders = tiny_loaders(shape=(9, SIZE, SIZE))
    train(model, loaders, tiny_config(epochs=1), tmp_path, progress=False)

    reloaded = load_model(tmp_path / "best.pt")
    assert reloaded.arch == "2.5d"
    assert not reloaded.training
    expected, expected_rows = predict(model, loaders["val"], device="cpu")
    probabilities, rows = predict(reloaded, loaders["val"], device="cpu")
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rows, expected_rows)


def test_predict_returns_sigmoid_and_rows():
    model = fresh_model().eval()
    loader = tiny_loaders()["val"]

    probabilities, rows = predict(model, loader, device="cpu")

    with torch.no_grad():
        logits = torch.cat([model(batch["image"]) for batch in loader])
    assert probabilities.shape == (10, 5)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, torch.sigmoid(logits).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rows, np.arange(16, 26))


def test_resume_equals_uninterrupted(tmp_path):
    config = tiny_config(epochs=2)
    uninterrupted_dir = tmp_path / "uninterrupted"
    train(fresh_model(), tiny_loaders(), config, uninterrupted_dir, progress=False)

    # Epoch 1 reads 16 items; the crash comes during epoch 2's second batch.
    interrupted_dir = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(fresh_model(), tiny_loaders(fail_after=16 + 8), config, interrupted_dir, progress=False)
    assert load_checkpoint(interrupted_dir / "last.pt")["epoch"] == 1

    # A differently initialised model must not matter: resuming loads everything from last.pt.
    train(fresh_model(seed=5), tiny_loaders(), config, interrupted_dir, resume=True, progress=False)

    expected = load_checkpoint(uninterrupted_dir / "last.pt")
    resumed = load_checkpoint(interrupted_dir / "last.pt")
    assert resumed["epoch"] == 2
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0, msg=name)
    expected_moments = expected["optimizer"]["state"][0]["exp_avg"]
    torch.testing.assert_close(resumed["optimizer"]["state"][0]["exp_avg"], expected_moments, rtol=0, atol=0)
    assert resumed["history"][0]["val_loss"] == expected["history"][0]["val_loss"]
    assert resumed["history"][1]["val_loss"] == expected["history"][1]["val_loss"]


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    history = train(fresh_model(), tiny_loaders(), tiny_config(epochs=1), tmp_path, resume=True, progress=False)
    assert len(history.rows) == 1


def test_resume_rejects_other_model(tmp_path):
    train(fresh_model(), tiny_loaders(), tiny_config(epochs=1), tmp_path, progress=False)
    config = tiny_config(epochs=2)
    with pytest.raises(ValueError, match="build_model"):
        train(fresh_model(drop_rate=0.5), tiny_loaders(), config, tmp_path, resume=True, progress=False)


def test_series_chunks_train_and_predict(tmp_path):
    model = fresh_model("lstm", series_mode=True)
    loaders = {
        "train": DataLoader(ToyChunks(2, 4, seed=0, n_valid_last=4), batch_size=2),
        "val": DataLoader(ToyChunks(2, 4, seed=1, n_valid_last=3), batch_size=2),
    }

    history = train(model, loaders, tiny_config(epochs=1), tmp_path, progress=False)
    probabilities, rows = predict(model, loaders["val"], device="cpu")

    assert len(history.rows) == 1
    assert math.isfinite(history.rows[0]["val_loss"])
    assert probabilities.shape == (7, 5)
    np.testing.assert_array_equal(rows, np.arange(7))


def test_save_checkpoint_crash_keeps_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"weight": torch.ones(2)}, "epoch": 1}, path)

    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint({"model": {"weight": torch.zeros(2)}, "epoch": 2, "hook": lambda: None}, path)

    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(item.name for item in tmp_path.iterdir()) == ["last.pt"]


def test_load_checkpoint_rejects_code(tmp_path):
    path = tmp_path / "shared.pt"
    torch.save({"model": {}, "config": pd.Timestamp("2020-01-01")}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(path)


def test_load_model_without_build_settings(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"model": fresh_model().state_dict()}, path)
    with pytest.raises(ValueError, match="foreign.pt has no config.build_kwargs entry"):
        load_model(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"junk\n", "KeyError"), (b"", "EOFError"), (bytes(range(256)) * 20, "UnpicklingError")],
)
def test_load_checkpoint_rejects_damaged_file(tmp_path, content, reason):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"best.pt could not be read with weights_only=True \({reason}") as error:
        load_checkpoint(path)
    assert "weights_only=False" not in str(error.value)
    assert len(str(error.value)) < 400


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_training_labels_uses_dataset_rows():
    loader = tiny_loaders()["val"]
    from_rows = training_labels(loader)
    by_batches = np.concatenate([batch["labels"].numpy() for batch in loader])
    np.testing.assert_array_equal(from_rows, by_batches)


def test_class_weights_from_labels():
    labels = np.zeros((10, 5), dtype=np.float32)
    labels[:1, 0] = 1  # 1 positive, 9 negatives
    labels[:5, 1] = 1  # 5 and 5
    labels[:, 2] = 1  # no negatives
    weights = class_weights_from_labels(labels)
    torch.testing.assert_close(weights, torch.tensor([9.0, 1.0, 0.0, 1.0, 1.0]))


def test_warmup_cosine_schedule():
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    assert factor(0) == pytest.approx(0.5)
    assert factor(1) == pytest.approx(1.0)
    assert factor(2) == pytest.approx(1.0)
    assert factor(6) == pytest.approx(0.5)
    assert factor(10) == pytest.approx(0.0)


def test_early_stopping_patience():
    stopping = EarlyStopping(patience=2)
    assert stopping.update(1, 1.0)
    assert not stopping.update(2, 1.1)
    assert not stopping.should_stop
    assert not stopping.update(3, 1.0)
    assert stopping.should_stop
    assert stopping.best_epoch == 1


def test_early_stopping_ends_run(tmp_path):
    # A learning rate of zero leaves the weights unchanged, so validation never improves after epoch 1.
    config = tiny_config(epochs=4, patience=1, learning_rate=0.0)
    model = fresh_model().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.0  # keep the running statistics fixed as well

    history = train(model, tiny_loaders(), config, tmp_path, progress=False)

    assert history.stopped_early
    assert len(history.rows) == 2
    assert history.best_epoch == 1


def test_validation_scores_known_predictions():
    labels = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32)
    probabilities = np.where(labels == 1, 0.9, 0.1)
    probabilities[0, 3] = 0.4  # one missed subarachnoid slice

    scores = validation_scores(labels, probabilities)

    assert scores["auc_epidural"] == pytest.approx(1.0)
    assert scores["f1_epidural"] == pytest.approx(1.0)
    assert scores["f1_subarachnoid"] == pytest.approx(2 / 3)
    assert math.isnan(scores["auc_intraventricular"])
    assert scores["f1_intraventricular"] == 0.0
    assert scores["mean_auc"] == pytest.approx(1.0)


def test_select_device():
    assert select_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert select_device("auto").type == expected
    else:
        assert select_device("auto").type in ("mps", "cpu")
    with pytest.raises(ValueError, match="tpu"):
        select_device("tpu")
