"""Tests for the three model paths, tile and divide, the series mode and pretrained weights."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models._manipulate import adapt_input_conv

from ichlab.models import (
    PretrainedWeightsError,
    build_model,
    stack_slices,
    tile_and_divide,
    transfer_2d_weights,
)

SIZE = 32  # pixels per side: small for speed; the backbone reduces it to a 1 x 1 feature map


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def windows(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random windowed pixels in [0, 1] of the given shape."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator)


@pytest.mark.parametrize("n_slices", [1, 3, 5, 7])
def test_tile_and_divide_matches_timm(n_slices):
    weight = torch.randn(32, 3, 3, 3)
    adapted = tile_and_divide(weight, n_slices)
    assert adapted.shape == (32, 3 * n_slices, 3, 3)
    torch.testing.assert_close(adapted, adapt_input_conv(3 * n_slices, weight.clone()))


def test_tile_and_divide_keeps_dtype():
    weight = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    assert tile_and_divide(weight, 3).dtype == torch.float64


def test_tile_and_divide_sums_back():
    weight = torch.randn(8, 3, 3, 3)
    adapted = tile_and_divide(weight, 3).view(8, 3, 3, 3, 3)  # (out, slice, window, kh, kw)
    torch.testing.assert_close(adapted.sum(dim=1), weight)


@pytest.mark.parametrize("shape, n_slices", [((8, 9, 3, 3), 3), ((8, 3, 3), 3), ((8, 3, 3, 3), 0)])
def test_tile_and_divide_rejects_bad_input(shape, n_slices):
    with pytest.raises(ValueError):
        tile_and_divide(torch.zeros(shape), n_slices)


def test_2_5d_identical_slices_equal_2d():
    torch.manual_seed(0)
    model_2d = build_model("2d").eval()
    model_2_5d = transfer_2d_weights(model_2d, build_model("2.5d")).eval()
    image = windows(2, 3, SIZE, SIZE)  # (B, 3, H, W)

    with torch.no_grad():
        logits_2d = model_2d(image)
        logits_2_5d = model_2_5d(torch.cat([image, image, image], dim=1))  # (B, 9, H, W)

    assert logits_2_5d.shape == (2, 5)
    torch.testing.assert_close(logits_2_5d, logits_2d, rtol=1e-5, atol=1e-5)


def test_2_5d_fresh_stem_is_tiled_2d_stem():
    model = build_model("2.5d")
    stem = model.backbone.conv_stem.weight
    assert stem.shape == (32, 9, 3, 3)
    torch.testing.assert_close(stem[:, 0:3], stem[:, 3:6])
    torch.testing.assert_close(stem[:, 0:3], stem[:, 6:9])


def test_2_5d_channel_layout_is_slice_major():
    torch.manual_seed(0)
    model_2d = build_model("2d").eval()
    model_2_5d = transfer_2d_weights(model_2d, build_model("2.5d")).eval()
    window = windows(2, 3, 3, SIZE, SIZE)  # (B, K, 3, H, W): previous, current, next
    stem_2d = model_2d.backbone.conv_stem
    stem_2_5d = model_2_5d.backbone.conv_stem

    with torch.no_grad():
        # The stem is linear: the 2.5D response is the mean of the 2D responses per slice.
        per_slice = [stem_2d(model_2d.normalize(window[:, s])) for s in range(3)]
        expected = torch.stack(per_slice).mean(dim=0)
        slice_major = stem_2_5d(model_2_5d.normalize(stack_slices(window)))
        window_major = stem_2_5d(model_2_5d.normalize(stack_slices(window.transpose(1, 2))))

    torch.testing.assert_close(slice_major, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(window_major, expected, rtol=1e-4, atol=1e-5)


def test_stack_slices_order():
    window = windows(1, 3, 3, 4, 4)  # (B, K, 3, H, W)
    stacked = stack_slices(window)
    assert stacked.shape == (1, 9, 4, 4)
    torch.testing.assert_close(stacked[:, 3:6], window[:, 1])  # the current slice's windows
    torch.testing.assert_close(stacked[:, 5], window[:, 1, 2])  # the current slice's bone window


@pytest.mark.parametrize("arch, n_slices", [("2d", 1), ("2.5d", 3), ("lstm", 1)])
def test_normalisation_uses_pretrained_stats(arch, n_slices):
    model = build_model(arch).eval()
    config = model.backbone.pretrained_cfg
    mean = torch.tensor(config["mean"]).repeat(n_slices)
    std = torch.tensor(config["std"]).repeat(n_slices)
    torch.testing.assert_close(model.normalize.mean.flatten(), mean)
    torch.testing.assert_close(model.normalize.std.flatten(), std)


def test_2d_forward_normalises_inputs():
    model = build_model("2d").eval()
    image = windows(2, 3, SIZE, SIZE)
    mean = torch.tensor(model.backbone.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.backbone.pretrained_cfg["std"]).view(1, 3, 1, 1)

    with torch.no_grad():
        by_hand = model.head(model.backbone((image - mean) / std))
        torch.testing.assert_close(model(image), by_hand)


def test_backbone_gives_pooled_features():
    model = build_model("lstm")
    with torch.no_grad():
        features = model.backbone(windows(2, 3, SIZE, SIZE))
    assert features.shape == (2, 1280)


@pytest.mark.parametrize("arch, shape", [("2d", (2, 3)), ("2.5d", (2, 9)), ("lstm", (2, 3, 3))])
def test_output_shapes(arch, shape):
    model = build_model(arch).eval()
    assert model.arch == arch
    with torch.no_grad():
        logits = model(windows(*shape, SIZE, SIZE))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_2_5d_rejects_wrong_channel_count():
    model = build_model("2.5d").eval()
    with pytest.raises(ValueError, match="9 input channels"):
        model(windows(1, 3, SIZE, SIZE))


def test_lstm_accepts_folded_window():
    model = build_model("lstm").eval()
    window = windows(2, 3, 3, SIZE, SIZE)  # (B, K, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(model(stack_slices(window)), model(window))


@pytest.mark.parametrize("context_slices", [5, 7])
def test_lstm_wider_windows(context_slices):
    model = build_model("lstm", context_slices=context_slices).eval()
    with torch.no_grad():
        logits = model(windows(1, context_slices, 3, SIZE, SIZE))
    assert logits.shape == (1, 5)
    with pytest.raises(ValueError, match=f"{context_slices} slices"):
        model(windows(1, 3, 3, SIZE, SIZE))


@pytest.mark.parametrize("context_slices", [3, 5])
def test_series_mode_matches_windows(context_slices):
    torch.manual_seed(0)
    model = build_model("lstm", context_slices=context_slices).eval()
    half = context_slices // 2
    chunk = windows(2, 4 + 2 * half, 3, SIZE, SIZE)  # (B, N, 3, H, W): 4 labelled slices

    with torch.no_grad():
        series_logits = model.forward_series(chunk)  # (B, 4, 5)
        window_logits = [model(chunk[:, i - half : i + half + 1]) for i in range(half, half + 4)]

    assert series_logits.shape == (2, 4, 5)
    torch.testing.assert_close(series_logits, torch.stack(window_logits, dim=1), rtol=1e-5, atol=1e-5)


def test_series_all_slices_clip_at_edges():
    torch.manual_seed(0)
    model = build_model("lstm").eval()
    series = windows(5, 3, SIZE, SIZE)  # (N, 3, H, W): one series

    with torch.no_grad():
        series_logits = model.forward_series(series, all_slices=True)  # (N, 5)
        expected = []
        for i in range(5):
            neighbours = [max(i - 1, 0), i, min(i + 1, 4)]  # clipped to the series
            expected.append(model(series[neighbours].unsqueeze(0))[0])

    assert series_logits.shape == (5, 5)
    torch.testing.assert_close(series_logits, torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_series_mode_forward_takes_chunks():
    model = build_model("lstm", series_mode=True).eval()
    with torch.no_grad():
        logits = model(windows(2, 6, 3, SIZE, SIZE))
    assert logits.shape == (2, 4, 5)
    with pytest.raises(ValueError, match="at least 3 slices"):
        model(windows(1, 2, 3, SIZE, SIZE))


def test_bidirectional_whole_series():
    model = build_model("lstm", bidirectional=True, context_slices=5).eval()
    assert model.lstm.bidirectional
    assert model.head.in_features == 512
    with torch.no_grad():
        window_logits = model(windows(2, 5, 3, SIZE, SIZE))
        series = windows(9, 3, SIZE, SIZE)
        all_logits = model.forward_series(series, all_slices=True)
        inner_logits = model.forward_series(series)
    assert window_logits.shape == (2, 5)
    assert all_logits.shape == (9, 5)
    assert inner_logits.shape == (5, 5)
    torch.testing.assert_close(inner_logits, all_logits[2:7])


@pytest.mark.parametrize("arch, options", [("2d", {}), ("2.5d", {"context_slices": 5}), ("lstm", {"bidirectional": True})])
def test_build_kwargs_rebuild(arch, options):
    model = build_model(arch, **options).eval()
    rebuilt = build_model(**model.build_kwargs).eval()
    rebuilt.load_state_dict(model.state_dict())
    for value in model.build_kwargs.values():
        assert isinstance(value, (str, int, float, bool))
    n_channels = 3 * options.get("context_slices", 3) if arch == "2.5d" else 3
    shape = (1, 3, 3, SIZE, SIZE) if arch == "lstm" else (1, n_channels, SIZE, SIZE)
    image = windows(*shape)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(image), model(image))


@pytest.mark.parametrize(
    "arch, options, message",
    [
        ("3d", {}, "not one of"),
        ("lstm", {"context_slices": 4}, "odd"),
        ("2d", {"series_mode": True}, "options of the 'lstm' path"),
        ("2.5d", {"bidirectional": True}, "options of the 'lstm' path"),
    ],
)
def test_build_model_rejects_bad_options(arch, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(arch, **options)


@pytest.fixture
def weights_file(tmp_path):
    """A timm EfficientNet-B0 ImageNet-shaped state dict saved as a local weights file."""
    torch.manual_seed(1)
    reference = timm.create_model("efficientnet_b0", num_classes=1000)
    path = tmp_path / "efficientnet_b0.pth"
    torch.save(reference.state_dict(), path)
    return path, reference.state_dict()


def test_local_weights_file_2d(weights_file):
    path, reference = weights_file
    model = build_model("2d", pretrained=True, weights_file=path)
    state = model.backbone.state_dict()
    for key in ("conv_stem.weight", "blocks.3.0.conv_pw.weight", "bn2.running_mean"):
        torch.testing.assert_close(state[key], reference[key])
    assert "classifier.weight" not in state


def test_local_weights_file_2_5d_stem(weights_file):
    path, reference = weights_file
    model = build_model("2.5d", pretrained=True, weights_file=path)
    stem = model.backbone.conv_stem.weight
    torch.testing.assert_close(stem, tile_and_divide(reference["conv_stem.weight"], 3))


def test_weights_from_environment(weights_file, monkeypatch):
    path, reference = weights_file
    monkeypatch.setenv("ICHLAB_WEIGHTS", str(path))
    model = build_model("lstm", pretrained=True)
    torch.testing.assert_close(model.backbone.conv_stem.weight, reference["conv_stem.weight"])


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        build_model("2d", pretrained=True, weights_file=missing)


def test_offline_without_file_names_fixes(tmp_path, monkeypatch):
    monkeypatch.delenv("ICHLAB_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PretrainedWeightsError) as caught:
        build_model("2d", pretrained=True)
    message = str(caught.value)
    assert "ICHLAB_WEIGHTS" in message
    assert "weights_file" in message
    assert "internet" in message


def test_2_5d_layout_matches_dataset():
    from ichlab.datasets import window_batch

    generator = torch.Generator().manual_seed(0)
    hu = torch.randint(-1000, 1500, (2, 3, 8, 8), dtype=torch.int16, generator=generator)  # (B, K, H, W)
    sequence = window_batch(hu, "sequence")  # (B, K, 3, H, W): the LSTM input
    stacked = window_batch(hu, "2.5d")  # (B, 3K, H, W): the 2.5D input
    torch.testing.assert_close(stacked, stack_slices(sequence))


def test_bench_counts_lstm_compute():
    from ichlab.commands.bench import BenchSettings, run_benchmarks

    settings = BenchSettings(sizes=(32,), batch_size=4, steps=1, warmup_steps=0, series_slices=5, device="cpu")
    tables = run_benchmarks(settings, progress=False)

    assert list(tables["training"]["path"]) == ["2d", "2.5d", "lstm", "lstm series"]
    assert (tables["training"]["samples_per_second"] > 0).all()
    cost = tables["lstm_cost"].set_index("path")["flops_vs_2d"]
    # Per labelled slice: 3 backbone passes per window, 6 passes for a chunk of 4 in series mode.
    assert cost["lstm"] == pytest.approx(3.0, rel=0.1)
    assert cost["lstm series"] == pytest.approx(6 / 4, rel=0.1)
    assert cost["2.5d"] == pytest.approx(1.0, rel=0.1)  # only the stem reads 9 channels instead of 3
    assert list(tables["series_inference"]["series_slices"]) == [5, 5, 5, 5]
