"""Tests for Grad-CAM on the three model paths: shapes, the LSTM slice mapping, batches, state."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ichlab import SUBTYPES
from ichlab.cam import compute_cams, compute_window_cams, slice_reshape_transform, subtype_indices, target_layer
from ichlab.models import build_model

SIZE = 64  # pixels per side: the backbone's stride of 32 leaves a 2 x 2 feature map
INPUT_SHAPES = {"2d": (3, SIZE, SIZE), "2.5d": (9, SIZE, SIZE), "lstm": (3, 3, SIZE, SIZE)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "2d": build_model("2d").eval(),
        "2.5d": build_model("2.5d").eval(),
        "lstm": build_model("lstm", lstm_hidden=32).eval(),
    }


def inputs(arch: str, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *INPUT_SHAPES[arch], generator=generator)


def make_evidence_positive(model, subtype: int) -> None:
    """Give ``subtype`` a head row of +1 on its input features, so its map has positive evidence.

    For the 2D and 2.5D paths the head reads the pooled SiLU features directly, which are
    mostly positive, so the CAM (their sum) is positive.
    """
    with torch.no_grad():
        model.head.weight[subtype] = 1.0
        model.head.bias[subtype] = 0.0


@pytest.mark.parametrize("arch", ["2d", "2.5d", "lstm"])
def test_cam_shape_and_range(models, arch):
    result = compute_cams(models[arch], inputs(arch, 2), ["epidural", "subdural"])
    assert result.maps.shape == (2, SIZE, SIZE)
    assert result.maps.dtype == np.float32
    assert np.isfinite(result.maps).all()
    assert result.maps.min() >= 0.0
    assert result.maps.max() <= 1.0
    assert result.empty.shape == (2,)
    assert result.empty.dtype == bool
    assert result.subtypes == [0, 4]
    for cam, empty in zip(result.maps, result.empty):
        assert cam.max() == (0.0 if empty else pytest.approx(1.0, abs=1e-3))


def test_cam_accepts_numpy_and_indices(models):
    images = inputs("2d", 1).numpy()
    by_index = compute_cams(models["2d"], images, [2])
    by_name = compute_cams(models["2d"], torch.from_numpy(images), ["intraventricular"])
    np.testing.assert_allclose(by_index.maps, by_name.maps, atol=1e-6)


def test_target_layer_is_pooled_feature_map(models):
    for model in models.values():
        assert target_layer(model) is model.backbone.bn2


def test_batched_targets_match_single_images():
    torch.manual_seed(1)
    model = build_model("2d").eval()
    for subtype in range(len(SUBTYPES)):
        make_evidence_positive(model, subtype)
    images = inputs("2d", 3, seed=1)
    subtypes = ["epidural", "subarachnoid", "subdural"]
    batched = compute_cams(model, images, subtypes)
    for i, subtype in enumerate(subtypes):
        single = compute_cams(model, images[i:i + 1], [subtype])
        np.testing.assert_allclose(batched.maps[i], single.maps[0], atol=1e-4)
        assert batched.empty[i] == single.empty[0]


def test_batched_targets_explain_each_named_subtype():
    torch.manual_seed(2)
    model = build_model("2d").eval()
    with torch.no_grad():
        model.head.weight[1:] = 0.0  # only epidural has evidence
        model.head.bias.zero_()
    make_evidence_positive(model, 0)
    image = inputs("2d", 1, seed=2)
    result = compute_cams(model, image.repeat(2, 1, 1, 1), ["epidural", "intraparenchymal"])
    assert not result.empty[0]
    assert result.empty[1]


@pytest.mark.parametrize("subtypes", [["epidural"], ["epidural", "subdural", "subdural"], []])
def test_wrong_length_target_list_raises(models, subtypes):
    with pytest.raises(ValueError, match="one subtype per image"):
        compute_cams(models["2d"], inputs("2d", 2), subtypes)


@pytest.mark.parametrize("subtypes", ["epidural", 0])
def test_single_target_value_raises(models, subtypes):
    with pytest.raises(ValueError, match="one subtype per image"):
        compute_cams(models["2d"], inputs("2d", 1), subtypes)


@pytest.mark.parametrize("subtype", ["any", "hematoma", 5, -1, True])
def test_unknown_subtype_raises(subtype):
    with pytest.raises(ValueError):
        subtype_indices([subtype], 1)


@pytest.mark.parametrize("arch", ["2d", "lstm"])
def test_zero_evidence_gives_empty_map(arch):
    torch.manual_seed(3)
    model = build_model(arch, lstm_hidden=32).eval()
    with torch.no_grad():
        model.head.weight[3] = 0.0  # the subarachnoid logit no longer depends on the image
    result = compute_cams(model, inputs(arch, 1, seed=3), ["subarachnoid"])
    assert result.empty.tolist() == [True]
    assert not result.maps.any()


def test_positive_evidence_is_not_empty():
    torch.manual_seed(4)
    model = build_model("2d").eval()
    make_evidence_positive(model, 1)
    result = compute_cams(model, inputs("2d", 1, seed=4), ["intraparenchymal"])
    assert result.empty.tolist() == [False]
    assert result.maps.max() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("arch", ["2d", "lstm"])
def test_model_state_restored(arch):
    torch.manual_seed(5)
    model = build_model(arch, lstm_hidden=32)
    model.train()
    model.backbone.bn2.eval()  # a frozen batch norm inside a training model
    for parameter in model.backbone.blocks.parameters():
        parameter.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    modes = {name: module.training for name, module in model.named_modules()}
    flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    compute_cams(model, inputs(arch, 1, seed=5), ["subdural"])

    assert {name: module.training for name, module in model.named_modules()} == modes
    assert {name: parameter.requires_grad for name, parameter in model.named_parameters()} == flags
    torch.testing.assert_close(model.head.weight.grad, torch.ones_like(model.head.weight))
    assert model.backbone.conv_stem.weight.grad is None


def test_state_restored_after_error():
    model = build_model("lstm", lstm_hidden=32).train()
    five_slices = torch.rand(1, 5, 3, SIZE, SIZE)  # the model takes windows of 3
    with pytest.raises(ValueError, match="windows of 3 slices"):
        compute_cams(model, five_slices, ["epidural"])
    assert model.training
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_lstm_reshape_picks_each_slice(models):
    """The slice transform's feature maps equal the backbone run on that slice alone."""
    model = models["lstm"]
    window = inputs("lstm", 2, seed=6)  # (B, K, 3, H, W) with different slices
    captured = []
    handle = target_layer(model).register_forward_hook(lambda module, args, output: captured.append(output.detach().clone()))
    try:
        with torch.no_grad():
            model(window)
            for position in range(3):
                model.backbone(model.normalize(window[:, position]))  # (B, 1280)
    finally:
        handle.remove()
    in_window, alone = captured[0], captured[1:]
    for position in range(3):
        picked = slice_reshape_transform(3, position)(in_window)  # (B, 1280, 2, 2)
        torch.testing.assert_close(picked, alone[position])


def grad_cam_by_hand(model, window: torch.Tensor, subtype: int, position: int) -> np.ndarray:
    """Grad-CAM of one LSTM window from autograd: ReLU(sum_c mean(dy/dA_c) A_c), resized and scaled."""
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["features"] = output

    model.zero_grad()
    handle = target_layer(model).register_forward_hook(keep)
    try:
        logits = model(window)  # (1, 5)
        logits[0, subtype].backward()
    finally:
        handle.remove()
    features = captured["features"]  # (K, 1280, h, w): slices of the one window
    activations = features[position].detach().numpy()  # (1280, h, w)
    weights = features.grad[position].numpy().mean(axis=(1, 2))  # (1280,)
    cam = np.maximum((weights[:, None, None] * activations).sum(axis=0), 0)
    cam = cv2.resize(cam, (window.shape[-1], window.shape[-2]))
    cam = cam - cam.min()
    return cam / cam.max()


@pytest.mark.parametrize("position", ["centre", 0])
def test_lstm_cam_matches_manual_gradients(position):
    torch.manual_seed(7)
    model = build_model("lstm", lstm_hidden=32).eval()
    window = inputs("lstm", 1, seed=7)
    index = 1 if position == "centre" else position
    result = compute_cams(model, window, ["subdural"], slice_position=position)
    if result.empty[0]:
        pytest.fail("the seeded model gave an empty map; pick another seed")
    np.testing.assert_allclose(result.maps[0], grad_cam_by_hand(model, window, 4, index), atol=1e-3)


def test_window_cams_hold_each_slice(models):
    window = inputs("lstm", 1, seed=8)
    per_slice = compute_window_cams(models["lstm"], window, ["epidural"])
    centre = compute_cams(models["lstm"], window, ["epidural"])
    assert per_slice.maps.shape == (1, 3, SIZE, SIZE)
    assert per_slice.empty.shape == (1, 3)
    np.testing.assert_allclose(per_slice.maps[:, 1], centre.maps, atol=1e-6)


@pytest.mark.parametrize("position", [3, -4, "middle", 1.0])
def test_bad_slice_position_raises(models, position):
    with pytest.raises(ValueError, match="slice_position"):
        compute_cams(models["lstm"], inputs("lstm", 1), ["epidural"], slice_position=position)


def test_slice_position_on_image_input_raises(models):
    with pytest.raises(ValueError, match="slice_position"):
        compute_cams(models["2.5d"], inputs("2.5d", 1), ["epidural"], slice_position=1)


def test_wrong_input_rank_raises(models):
    with pytest.raises(ValueError, match="images must be"):
        compute_cams(models["2d"], torch.rand(3, SIZE, SIZE), ["epidural"] * 3)


def test_series_mode_model_explains_windows():
    torch.manual_seed(9)
    per_window = build_model("lstm", lstm_hidden=32).eval()
    series = build_model("lstm", lstm_hidden=32, series_mode=True).eval()
    series.load_state_dict(per_window.state_dict())
    window = inputs("lstm", 1, seed=9)
    np.testing.assert_allclose(
        compute_cams(series, window, ["epidural"]).maps, compute_cams(per_window, window, ["epidural"]).maps, atol=1e-5
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: cuDNN's LSTM backward only exists there")
def test_lstm_cam_on_cuda_in_eval_mode():
    torch.manual_seed(10)
    model = build_model("lstm", lstm_hidden=32).cuda().eval()
    window = inputs("lstm", 2, seed=10)
    result = compute_cams(model, window, ["epidural", "subdural"])
    cpu = compute_cams(model.cpu(), window, ["epidural", "subdural"])
    assert not model.training
    assert torch.backends.cudnn.enabled
    np.testing.assert_allclose(result.maps, cpu.maps, atol=1e-2)
