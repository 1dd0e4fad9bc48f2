"""Tests for the cache datasets: input shapes, neighbours, augmentation, device windowing, spawn workers."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ichlab.cache import build_cache
from ichlab.config import get_config
from ichlab.datasets import ARCH_INPUT_KINDS, SeriesChunkDataset, SliceDataset, make_loaders, window_batch
from ichlab.windows import stack_windows
from test_cache import block_hu, slice_table, write_kaggle_folder

SIZE = 16


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = write_kaggle_folder(tmp_path_factory.mktemp("rsna"))
    table, skipped = slice_table(root)
    return build_cache(table, tmp_path_factory.mktemp("cache") / "cache", SIZE, skipped=skipped, progress=False)


def block_of(hu_image: torch.Tensor) -> int:
    return int(hu_image[10, 4])  # a pixel inside the L-shaped block


def series_edges(cache):
    start, length = cache.series_bounds()
    return int(start[0]), int(start[0] + length[0] - 1)


@pytest.mark.parametrize(
    ("input_kind", "shape"), [("2d", (3, SIZE, SIZE)), ("2.5d", (9, SIZE, SIZE)), ("sequence", (3, 3, SIZE, SIZE))]
)
def test_slice_dataset_item_shapes(cache, input_kind, shape):
    dataset = SliceDataset(cache, "train", input_kind=input_kind)
    item = dataset[0]
    assert tuple(item["image"].shape) == shape
    assert item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0.0
    assert float(item["image"].max()) <= 1.0
    assert tuple(item["labels"].shape) == (5,)
    assert item["labels"].dtype == torch.float32
    assert item["row"].dtype == torch.int64
    assert len(dataset) == int((cache.index["split"] == "train").sum())


def test_slice_dataset_labels_follow_row(cache):
    dataset = SliceDataset(cache, None)
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["labels"].tolist() == cache.labels[int(item["row"])].tolist()


def test_stacked_input_is_neighbour_slices(cache):
    first, _ = series_edges(cache)
    middle = first + 2
    two_d = SliceDataset(cache, None, input_kind="2d")
    stacked = SliceDataset(cache, None, input_kind="2.5d")[middle]["image"]
    assert torch.equal(stacked[0:3], two_d[middle - 1]["image"])
    assert torch.equal(stacked[3:6], two_d[middle]["image"])
    assert torch.equal(stacked[6:9], two_d[middle + 1]["image"])


def test_neighbours_repeat_edge_slice(cache):
    first, last = series_edges(cache)
    dataset = SliceDataset(cache, None, input_kind="sequence", window_on_device=True)
    start_hu = dataset[first]["image"]
    end_hu = dataset[last]["image"]
    slice_index = cache.index["slice_index"]
    patient = int(cache.index.loc[first, "patient_id"].removeprefix("PAT"))
    assert [block_of(image) for image in start_hu] == [block_hu(patient, 0)] * 2 + [block_hu(patient, 1)]
    final = int(slice_index[last])
    assert [block_of(image) for image in end_hu] == [block_hu(patient, final - 1)] + [block_hu(patient, final)] * 2


def test_window_on_device_matches_item_windowing(cache):
    for input_kind in ("2d", "2.5d", "sequence"):
        raw = SliceDataset(cache, "train", input_kind=input_kind, window_on_device=True)
        windowed = SliceDataset(cache, "train", input_kind=input_kind)
        batch = torch.stack([raw[i]["image"] for i in range(4)])
        assert batch.dtype == torch.int16
        expected = torch.stack([windowed[i]["image"] for i in range(4)])
        assert torch.equal(window_batch(batch, input_kind), expected), input_kind


def test_augmentation_same_for_every_slice(cache):
    torch.manual_seed(0)
    first, _ = series_edges(cache)
    dataset = SliceDataset(cache, None, input_kind="sequence", context_slices=5, augment=True, window_on_device=True)
    plain = SliceDataset(cache, None, input_kind="sequence", context_slices=5, window_on_device=True)
    blocks = torch.tensor([block_of(image) for image in plain[first + 2]["image"]], dtype=torch.float32)
    changed = 0
    for _ in range(6):
        hu = dataset[first + 2]["image"].float()  # (5, H, W): five different slices of one series
        # The share of each pixel covered by the L-shaped block, 0 (air) to 1, after the transform.
        coverage = (hu + 1000) / (blocks[:, None, None] + 1000)
        for k in range(1, 5):
            assert torch.allclose(coverage[k], coverage[0], atol=0.01)
        changed += int(not torch.allclose(coverage[0], (plain[first + 2]["image"][0].float() + 1000) / (blocks[0] + 1000)))
    assert changed >= 4


def test_augmentation_differs_between_samples(cache):
    torch.manual_seed(1)
    dataset = SliceDataset(cache, None, input_kind="2d", augment=True, window_on_device=True)
    shapes = [dataset[0]["image"][0] > -500 for _ in range(5)]
    assert any(not torch.equal(shapes[0], other) for other in shapes[1:])


def test_series_chunks_cover_each_series_once(cache):
    dataset = SeriesChunkDataset(cache, None, chunk_size=4, context_slices=3)
    _, lengths = np.unique(cache.index["series_uid"], return_counts=True)
    assert len(dataset) == int(np.ceil(lengths / 4).sum())
    rows = torch.cat([dataset[i]["row"][dataset[i]["valid"]] for i in range(len(dataset))])
    assert sorted(rows.tolist()) == list(range(len(cache)))


def test_series_chunk_context_and_padding(cache):
    first, last = series_edges(cache)
    n_slices = last - first + 1
    dataset = SeriesChunkDataset(cache, None, chunk_size=4, context_slices=3, window_on_device=True)
    chunk_index = [i for i in range(len(dataset)) if int(dataset.chunks[i][0]) == first]
    head, tail = dataset[chunk_index[0]], dataset[chunk_index[-1]]
    patient = int(cache.index.loc[first, "patient_id"].removeprefix("PAT"))

    assert tuple(head["image"].shape) == (6, SIZE, SIZE)
    assert [block_of(image) for image in head["image"]] == [block_hu(patient, s) for s in (0, 0, 1, 2, 3, 4)]
    assert head["valid"].all()
    assert head["row"].tolist() == list(range(first, first + 4))

    n_valid = n_slices - 4
    assert tail["valid"].tolist() == [True] * n_valid + [False] * (4 - n_valid)
    assert tail["row"][n_valid:].tolist() == [-1] * (4 - n_valid)
    assert tail["labels"][n_valid:].abs().sum() == 0
    assert tuple(tail["labels"].shape) == (4, 5)


def test_series_chunks_windowed(cache):
    item = SeriesChunkDataset(cache, "train", chunk_size=4, context_slices=5)[0]
    assert tuple(item["image"].shape) == (8, 3, SIZE, SIZE)
    assert item["image"].dtype == torch.float32


def test_dataset_pickles_without_arrays(cache):
    dataset = SliceDataset(cache, "train", input_kind="2.5d")
    dataset[0]  # builds the neighbour table
    payload = pickle.dumps(dataset)
    assert len(payload) < 20_000
    copy = pickle.loads(payload)
    assert torch.equal(copy[3]["image"], dataset[3]["image"])


def test_loader_with_spawn_workers(cache):
    dataset = SliceDataset(cache, "train", input_kind="sequence")
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    batch = next(iter(loader))
    expected = torch.stack([dataset[i]["image"] for i in range(4)])
    assert torch.equal(batch["image"], expected)
    assert batch["row"].tolist() == dataset.rows[:4].tolist()


def quick_config(batch_size=4):
    config = get_config("quick")
    return replace(config, train=replace(config.train, batch_size=batch_size, seed=7))


@pytest.mark.parametrize(
    ("arch", "hu_shape", "model_shape"),
    [("2d", (4, 1, SIZE, SIZE), (4, 3, SIZE, SIZE)), ("2.5d", (4, 3, SIZE, SIZE), (4, 9, SIZE, SIZE)), ("lstm", (4, 3, SIZE, SIZE), (4, 3, 3, SIZE, SIZE))],
)
def test_make_loaders_batches(cache, arch, hu_shape, model_shape):
    loaders = make_loaders(cache, arch, quick_config())
    assert set(loaders) == {"train", "val", "test"}
    batch = next(iter(loaders["train"]))
    # int16 HU by default, on a CPU as on a GPU. The training loop windows it.
    assert batch["image"].dtype == torch.int16
    assert tuple(batch["image"].shape) == hu_shape
    assert tuple(window_batch(batch["image"], ARCH_INPUT_KINDS[arch]).shape) == model_shape
    assert tuple(batch["labels"].shape) == (4, 5)
    assert batch["row"].dtype == torch.int64


def test_make_loaders_seeded_shuffle(cache):
    def train_rows():
        return torch.cat([batch["row"] for batch in make_loaders(cache, "2d", quick_config())["train"]]).tolist()

    first = train_rows()
    assert first == train_rows()
    assert first != sorted(first)
    val_rows = torch.cat([batch["row"] for batch in make_loaders(cache, "2d", quick_config())["val"]]).tolist()
    assert val_rows == sorted(val_rows)


def test_dataset_rejects_bad_arguments(cache):
    with pytest.raises(ValueError, match="input_kind"):
        SliceDataset(cache, "train", input_kind="3d")
    with pytest.raises(ValueError, match="odd"):
        SliceDataset(cache, "train", input_kind="2.5d", context_slices=4)
    with pytest.raises(ValueError, match="split must be one of"):
        SliceDataset(cache, "validation")
    with pytest.raises(ValueError, match="no lesion masks"):
        SliceDataset(cache, "train", return_masks=True)
    with pytest.raises(ValueError, match="arch"):
        make_loaders(cache, "3d", quick_config())


def test_window_batch_values(cache):
    hu = torch.tensor([[[[40, -1000], [80, 3000]]]], dtype=torch.int16)  # (1, 1, 2, 2)
    windowed = window_batch(hu, "2d")  # (1, 3, 2, 2)
    assert torch.equal(windowed, stack_windows(hu.float()[:, 0]))
    assert float(windowed[0, 0, 0, 0]) == 0.5


@pytest.fixture(scope="module")
def generated_cache(tmp_path_factory):
    from ichlab.data import prepare_data

    base = tmp_path_factory.mktemp("generated")
    config = get_config("quick")
    data = replace(
        config.data, root=base / "data", cache_dir=base / "cache", n_patients=2, slices_per_series=(5, 5), phantom_size=64, image_size=32
    )
    return prepare_data(replace(config, data=data), progress=False)


def test_masks_follow_augmentation(generated_cache):
    from ichlab.datasets import random_affine_matrices, warp

    row = int(np.flatnonzero(generated_cache.index["any"].to_numpy())[0])
    dataset = SliceDataset(generated_cache, None, input_kind="2d", augment=True, window_on_device=True, return_masks=True)
    plain = SliceDataset(generated_cache, None, input_kind="2d", window_on_device=True, return_masks=True)
    assert torch.equal(plain[row]["masks"], torch.from_numpy(np.array(generated_cache.masks[row])).bool())

    torch.manual_seed(3)
    item = dataset[row]
    torch.manual_seed(3)
    matrix = random_affine_matrices(1)
    original = torch.from_numpy(np.array(generated_cache.masks[row]))[None]  # (1, 5, H, W)
    expected_masks = warp(original, matrix, fill=0.0, nearest=True)[0].bool()
    expected_hu = warp(torch.from_numpy(np.array(generated_cache.hu[row]))[None, None], matrix)[0].round().to(torch.int16)
    assert item["masks"].dtype == torch.bool
    assert torch.equal(item["masks"], expected_masks)
    assert torch.equal(item["image"], expected_hu)
    assert item["masks"].any()


def test_augment_batch_per_sample_transform(cache):
    from ichlab.datasets import augment_batch

    dataset = SliceDataset(cache, None, input_kind="sequence", window_on_device=True)
    hu = torch.stack([dataset[i]["image"] for i in (2, 2, 2, 2)])  # (4, 3, H, W): one sample, four times
    augmented = augment_batch(hu, generator=torch.Generator().manual_seed(0))
    assert augmented.shape == hu.shape
    assert augmented.dtype == torch.float32
    blocks = torch.tensor([block_of(image) for image in hu[0]], dtype=torch.float32)
    coverage = (augmented + 1000) / (blocks[None, :, None, None] + 1000)  # (4, 3, H, W)
    for k in range(1, 3):
        assert torch.allclose(coverage[:, k], coverage[:, 0], atol=0.01)
    assert not torch.allclose(coverage[0, 0], coverage[1, 0], atol=0.01)
    assert window_batch(augmented, "sequence").shape == (4, 3, 3, SIZE, SIZE)


def test_make_loaders_windowed_on_request(cache):
    windowed = make_loaders(cache, "2.5d", quick_config(), window_on_device=False)
    hu = make_loaders(cache, "2.5d", quick_config())
    image = next(iter(windowed["val"]))["image"]
    assert image.dtype == torch.float32
    assert tuple(image.shape) == (4, 9, SIZE, SIZE)
    assert torch.equal(image, window_batch(next(iter(hu["val"]))["image"], "2.5d"))


def augmenting_config():
    config = quick_config()
    config.train.augment = True
    return config


def test_int16_loaders_skip_augmentation(cache):
    on_device = make_loaders(cache, "2.5d", augmenting_config())
    in_loader = make_loaders(cache, "2.5d", augmenting_config(), window_on_device=False)
    assert not on_device["train"].dataset.augment
    assert in_loader["train"].dataset.augment
    assert not in_loader["val"].dataset.augment


def test_to_device_augments_int16_batches(cache):
    from ichlab.validation import to_device

    batch = next(iter(make_loaders(cache, "2.5d", quick_config())["val"]))
    plain = to_device(batch, torch.device("cpu"), "2.5d", channels_last=False)["image"]
    torch.manual_seed(3)
    augmented = to_device(batch, torch.device("cpu"), "2.5d", channels_last=False, augment=True)["image"]
    torch.manual_seed(3)
    again = to_device(batch, torch.device("cpu"), "2.5d", channels_last=False, augment=True)["image"]

    assert augmented.shape == plain.shape == (4, 9, SIZE, SIZE)
    assert not torch.equal(augmented, plain)
    assert torch.equal(augmented, again)
    assert float(augmented.min()) >= 0.0
    assert float(augmented.max()) <= 1.0


def test_to_device_leaves_windowed_batches(cache):
    from ichlab.validation import to_device

    batch = next(iter(make_loaders(cache, "2.5d", quick_config(), window_on_device=False)["val"]))
    moved = to_device(batch, torch.device("cpu"), "2.5d", channels_last=False, augment=True)["image"]
    assert torch.equal(moved, batch["image"])


def test_train_augments_on_the_device(cache, tmp_path, caplog):
    import logging

    from ichlab.models import build_model
    from ichlab.training import train

    def one_epoch(config, run_dir):
        config.train.epochs = 1
        config.train.device = "cpu"
        torch.manual_seed(0)
        return train(build_model("2d"), make_loaders(cache, "2d", config), config, run_dir, progress=False)

    with caplog.at_level(logging.INFO, logger="ichlab.training"):
        augmented = one_epoch(augmenting_config(), tmp_path / "augmented")
    plain = one_epoch(quick_config(), tmp_path / "plain")

    assert "augmenting training batches on cpu" in caplog.text
    assert augmented.rows[0]["train_loss"] != plain.rows[0]["train_loss"]


def test_resume_with_workers_equals_uninterrupted(cache, tmp_path, monkeypatch):
    from ichlab import training
    from ichlab.checkpoints import load_checkpoint
    from ichlab.models import build_model

    def run(run_dir, workers, crash_in_epoch=None, resume=False):
        config = augmenting_config()
        config.train.epochs = 2
        config.train.device = "cpu"
        config.data.num_workers = workers
        original, epochs_started = training.train_one_epoch, []

        def crash_in_given_epoch(*args, **kwargs):
            epochs_started.append(1)
            if len(epochs_started) == crash_in_epoch:
                raise RuntimeError("simulated crash")
            return original(*args, **kwargs)

        monkeypatch.setattr(training, "train_one_epoch", crash_in_given_epoch)
        torch.manual_seed(0)
        training.train(build_model("2d"), make_loaders(cache, "2d", config), config, run_dir, resume=resume, progress=False)
        return load_checkpoint(run_dir / "last.pt")

    uninterrupted = run(tmp_path / "uninterrupted", workers=2)
    in_process = run(tmp_path / "in-process", workers=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "resumed", workers=2, crash_in_epoch=2)
    resumed = run(tmp_path / "resumed", workers=2, resume=True)

    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
        assert torch.equal(in_process["model"][name], tensor), name
    assert [row["val_loss"] for row in resumed["history"]] == [row["val_loss"] for row in uninterrupted["history"]]


@pytest.mark.parametrize(
    ("shape", "input_kind", "message"),
    [((2, 3, 4, 4), "2d", "one slice per sample"), ((2, 3, 4, 4), "3d", "input_kind must be one of"), ((3, 4, 4), "2.5d", r"\(B, K, H, W\)")],
)
def test_window_batch_rejects_mismatch(shape, input_kind, message):
    with pytest.raises(ValueError, match=message):
        window_batch(torch.zeros(shape, dtype=torch.int16), input_kind)
