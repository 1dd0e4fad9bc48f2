"""Tests for ichlab.windows: the three CT windows and their channel stacking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichlab.windows import CHANNEL_ORDER, WINDOWS, apply_window, stack_windows


def test_window_presets():
    assert WINDOWS["brain"] == (40.0, 80.0)
    assert WINDOWS["subdural"] == (80.0, 200.0)
    assert WINDOWS["bone"] == (600.0, 2800.0)
    assert CHANNEL_ORDER == ("brain", "subdural", "bone")


def test_apply_window_maps_edges_and_clips():
    hu = np.array([-1024.0, 0.0, 20.0, 40.0, 60.0, 80.0, 3000.0])
    windowed = apply_window(hu, 40, 80)
    assert windowed.dtype == np.float32
    np.testing.assert_allclose(windowed, [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


@pytest.mark.parametrize("hu", [-1024.0, 40.0])
def test_constant_image_has_no_nan(hu):
    image = np.full((8, 8), hu, dtype=np.float32)
    channels = stack_windows(image)
    assert not np.isnan(channels).any()


def test_hu_40_in_each_window():
    channels = stack_windows(np.full((4, 4), 40.0, dtype=np.float32))
    np.testing.assert_allclose(channels[0], 0.5)  # brain
    np.testing.assert_allclose(channels[1], 0.3, rtol=1e-6)  # subdural
    np.testing.assert_allclose(channels[2], 0.3, rtol=1e-6)  # bone


def test_air_is_zero_in_every_window():
    channels = stack_windows(np.full((4, 4), -1024.0, dtype=np.float32))
    assert channels.max() == 0.0


@pytest.mark.parametrize("width", [0, -80])
def test_apply_window_rejects_width(width):
    with pytest.raises(ValueError, match="width"):
        apply_window(np.zeros(3), 40, width)


def test_stack_windows_single_image_shape():
    hu = np.random.default_rng(0).uniform(-1100, 2000, size=(16, 12))
    channels = stack_windows(hu)
    assert channels.shape == (3, 16, 12)
    assert channels.dtype == np.float32
    np.testing.assert_array_equal(channels[2], apply_window(hu, *WINDOWS["bone"]))


def test_stack_windows_batch_shape():
    hu = np.random.default_rng(1).uniform(-1100, 2000, size=(2, 3, 8, 8))  # (B, K, H, W)
    channels = stack_windows(hu)
    assert channels.shape == (2, 3, 3, 8, 8)  # (B, K, 3, H, W)
    np.testing.assert_array_equal(channels[1, 2], stack_windows(hu[1, 2]))


def test_stack_windows_follows_names_order():
    hu = np.linspace(-100, 200, 64, dtype=np.float32).reshape(8, 8)
    reordered = stack_windows(hu, names=("bone", "brain"))
    assert reordered.shape == (2, 8, 8)
    np.testing.assert_array_equal(reordered[0], stack_windows(hu)[2])
    np.testing.assert_array_equal(reordered[1], stack_windows(hu)[0])


def test_stack_windows_rejects_unknown_name():
    with pytest.raises(KeyError, match="lung"):
        stack_windows(np.zeros((4, 4)), names=("brain", "lung"))


def test_stack_windows_rejects_1d_input():
    with pytest.raises(ValueError, match="shape"):
        stack_windows(np.zeros(4))


def test_torch_matches_numpy():
    hu = np.random.default_rng(2).uniform(-1100, 2000, size=(2, 8, 8)).astype(np.float32)
    from_numpy = stack_windows(hu)
    from_torch = stack_windows(torch.from_numpy(hu))
    assert isinstance(from_torch, torch.Tensor)
    assert from_torch.dtype == torch.float32
    assert tuple(from_torch.shape) == (2, 3, 8, 8)
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, atol=1e-6)


def test_torch_integer_input_becomes_float32():
    hu = torch.tensor([[-1024, 40], [80, 3000]], dtype=torch.int16)
    windowed = apply_window(hu, 40, 80)
    assert windowed.dtype == torch.float32
    assert windowed.tolist() == [[0.0, 0.5], [1.0, 1.0]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_windows_on_cuda():
    hu = torch.linspace(-1100, 2000, 3 * 8 * 8).reshape(3, 8, 8)
    on_gpu = stack_windows(hu.cuda())
    assert on_gpu.device.type == "cuda"
    np.testing.assert_allclose(on_gpu.cpu().numpy(), stack_windows(hu.numpy()), atol=1e-6)


def test_viewer_renders_each_view():
    from ichlab.widgets import VIEWS, render_slice

    hu = np.full((4, 5), 40.0, dtype=np.float32)
    assert render_slice(hu, "brain").shape == (4, 5)
    np.testing.assert_allclose(render_slice(hu, "subdural"), 0.3, rtol=1e-6)
    rgb = render_slice(hu, "channels as RGB")
    assert rgb.shape == (4, 5, 3)
    np.testing.assert_allclose(rgb[0, 0], [0.5, 0.3, 0.3], rtol=1e-6)
    assert render_slice(hu, "channels side by side").shape == (4, 15)
    assert len(VIEWS) == 5


def test_viewer_builds_widgets():
    from ichlab.widgets import slice_viewer

    volume = np.linspace(-1024, 100, 3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    viewer = slice_viewer(volume, positions_mm=[0.0, 5.0, 10.0])
    slider, preset = viewer.children[0].children
    assert (slider.min, slider.max, slider.value) == (0, 2, 1)
    preset.value = "channels side by side"
    slider.value = 2
    assert slider.value == 2


def test_viewer_rejects_unknown_view():
    from ichlab.widgets import render_slice

    with pytest.raises(ValueError, match="unknown view"):
        render_slice(np.zeros((4, 4)), "lung")
