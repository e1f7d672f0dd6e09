"""Attribution maps point at what decided the output: a filled square, placed in a known quadrant beside a
hollow frame as bright, decides the class."""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import pytest
import torch
from monai.networks.nets.dynunet import DynUNet
from torch import nn

from vesalius.core.errors import InputError
from vesalius.engines.classification.networks import ClassificationNetwork, MultiHeadClassifier, NetworkSpec
from vesalius.engines.detection.network import DetectorSpec, build_detector
from vesalius.trust.explain import (
    METHODS,
    BoxTarget,
    RegionTarget,
    default_layer,
    explain,
    explain_region,
    score_module,
)

SIZE = 64
HALF = SIZE // 2
QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))
"""Row half and column half of each quadrant."""


def shapes_image(
    generator: np.random.Generator, squares: list[int], frames: list[int], noise: float = 0.05
) -> npt.NDArray[np.float32]:
    """Filled bright squares (the evidence for class 1) and hollow frames as bright (distractors), one per
    listed quadrant, at a random size and place inside it."""
    image = generator.normal(0.0, noise, (1, SIZE, SIZE)).astype(np.float32)
    for quadrant, filled in [(q, True) for q in squares] + [(q, False) for q in frames]:
        row, col = QUADRANTS[quadrant]
        side = int(generator.integers(8, 14))
        top = row * HALF + int(generator.integers(2, HALF - side - 1))
        left = col * HALF + int(generator.integers(2, HALF - side - 1))
        image[0, top : top + side, left : left + side] += 1.0
        if not filled:
            image[0, top + 2 : top + side - 2, left + 2 : left + side - 2] -= 1.0
    return image


def random_case(generator: np.random.Generator) -> tuple[npt.NDArray[np.float32], int]:
    """Class 1: a filled square somewhere beside a frame; class 0: two frames."""
    first, second = (int(q) for q in generator.permutation(4)[:2])
    label = int(generator.random() < 0.5)
    squares = [second] if label else []
    return shapes_image(generator, squares, [first] + ([] if label else [second])), label


def positive_image(generator: np.random.Generator, square: int, frame: int) -> torch.Tensor:
    return torch.from_numpy(shapes_image(generator, [square], [frame]))[None]


STEPS = 150


@functools.cache
def train_quadrant_classifier() -> MultiHeadClassifier:
    """A small ResNet-10 taught whether the image holds a filled square (class 1) or only frames (class 0)."""
    torch.manual_seed(0)
    spec = NetworkSpec(
        architecture="resnet10", spatial_dims=2, in_channels=1, input_size=[SIZE, SIZE], heads={"main": 2}, width=0.25
    )
    model = ClassificationNetwork.build(spec)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = np.random.default_rng(0)
    model.train()
    for _ in range(STEPS):
        cases = [random_case(generator) for _ in range(16)]
        images = torch.from_numpy(np.stack([image for image, _ in cases]))
        labels = torch.tensor([label for _, label in cases])
        loss = nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    model.eval()
    return model


@pytest.fixture(scope="module")
def classifier() -> MultiHeadClassifier:
    return train_quadrant_classifier()


def quadrant_mass(attribution: npt.NDArray[np.float32], quadrant: int) -> float:
    row, col = QUADRANTS[quadrant]
    inside = attribution[row * HALF : (row + 1) * HALF, col * HALF : (col + 1) * HALF].sum()
    return float(inside / attribution.sum())


def test_trained_classifier_learned_the_task(classifier: MultiHeadClassifier) -> None:
    generator = np.random.default_rng(1)
    cases = [random_case(generator) for _ in range(64)]
    images = torch.from_numpy(np.stack([image for image, _ in cases]))
    with torch.no_grad():
        predicted = classifier(images).argmax(dim=1).numpy()
    assert (predicted == np.array([label for _, label in cases])).mean() >= 0.9


def point_and_share(attribution: npt.NDArray[np.float32]) -> tuple[tuple[int, int], list[float]]:
    """The quadrant of the map's peak (pointing game) and each quadrant's share of the map's mass."""
    assert attribution.shape == (SIZE, SIZE)
    assert attribution.dtype == np.float32
    assert attribution.min() >= 0.0
    assert attribution.max() == pytest.approx(1.0)
    row, col = np.unravel_index(int(np.argmax(attribution)), attribution.shape)
    return (int(row) // HALF, int(col) // HALF), [quadrant_mass(attribution, q) for q in range(4)]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "occlusion"])
def test_map_points_at_the_square_not_the_frame(classifier: MultiHeadClassifier, method: str) -> None:
    generator = np.random.default_rng(2)
    for square, frame in ((0, 3), (1, 2), (2, 1), (3, 0)):
        attribution = explain(classifier, positive_image(generator, square, frame), 1, method)
        peak, shares = point_and_share(attribution)
        assert peak == QUADRANTS[square]
        assert int(np.argmax(shares)) == square
        if method == "occlusion":  # Grad-CAM's 2x2 layer4 map spreads over the image when upsampled
            assert shares[square] > 0.5


@pytest.mark.parametrize("method", METHODS)
def test_map_of_a_lone_square_lies_in_its_quadrant(classifier: MultiHeadClassifier, method: str) -> None:
    """Integrated gradients' absolute attributions also mark negative evidence (a frame lowers the class-1
    logit), so for them the deciding object is shown alone; every method must find it."""
    generator = np.random.default_rng(6)
    for square in range(4):
        image = torch.from_numpy(shapes_image(generator, [square], []))[None]
        peak, shares = point_and_share(explain(classifier, image, 1, method))
        assert peak == QUADRANTS[square]
        assert int(np.argmax(shares)) == square
        if method in ("occlusion", "integrated_gradients"):
            assert shares[square] > 0.5


def test_explain_restores_mode_and_leaves_no_gradients(classifier: MultiHeadClassifier) -> None:
    image = torch.from_numpy(shapes_image(np.random.default_rng(3), [0], [1]))[None]
    classifier.train()
    try:
        for method in ("gradcam", "gradcam++", "integrated_gradients"):
            explain(classifier, image, 0, method)
        assert classifier.training
        assert all(module.training for module in classifier.modules())
        assert all(parameter.grad is None for parameter in classifier.parameters())
    finally:
        classifier.eval()


def test_explain_runs_in_eval_mode(classifier: MultiHeadClassifier) -> None:
    """Dropout and BatchNorm batch statistics would make the map depend on chance and on the batch."""
    modes: list[bool] = []
    handle = classifier.register_forward_pre_hook(lambda module, _inputs: modes.append(module.training))
    classifier.train()
    try:
        explain(classifier, torch.zeros(1, 1, SIZE, SIZE), 0, "gradcam")
    finally:
        handle.remove()
        classifier.eval()
    assert modes
    assert not any(modes)


def test_default_layer_of_a_resnet_classifier_is_its_last_stage(classifier: MultiHeadClassifier) -> None:
    assert default_layer(classifier) == "backbone.layer4"


def test_default_layer_of_a_plain_conv_net_is_its_last_feature_map() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    assert default_layer(model, torch.zeros(1, 1, 8, 8)) == "3"  # the ReLU after the last conv; the pool is 1x1
    assert default_layer(model) == "2"  # without a probe image: the last convolution


def test_unknown_layer_names_the_candidates(classifier: MultiHeadClassifier) -> None:
    image = torch.zeros(1, 1, SIZE, SIZE)
    with pytest.raises(InputError, match=r"backbone\.layer9.*candidates:.*backbone\.layer4"):
        explain(classifier, image, 0, "gradcam", layer="backbone.layer9")


def test_explicit_layer_changes_the_resolution(classifier: MultiHeadClassifier) -> None:
    """layer1 sees a 16x16 grid, layer4 a 2x2 one: the finer layer gives a map with more distinct values."""
    image = positive_image(np.random.default_rng(4), 3, 0)
    coarse = explain(classifier, image, 1, "gradcam")
    fine = explain(classifier, image, 1, "gradcam", layer="backbone.layer1")
    assert fine.shape == coarse.shape == (SIZE, SIZE)
    assert not np.allclose(fine, coarse)


def test_unknown_method_and_bad_targets_are_input_errors(classifier: MultiHeadClassifier) -> None:
    image = torch.zeros(1, 1, SIZE, SIZE)
    with pytest.raises(InputError, match=r"'saliency'.*gradcam"):
        explain(classifier, image, 0, "saliency")
    with pytest.raises(InputError, match="class 7"):
        explain(classifier, image, 7, "gradcam")
    with pytest.raises(InputError, match=r"\(1, C, \*spatial\)"):
        explain(classifier, torch.zeros(2, 1, SIZE, SIZE), 0, "gradcam")
    with pytest.raises(InputError, match="non-empty"):
        explain(classifier, image, RegionTarget(0, np.zeros((SIZE, SIZE), bool)), "gradcam")


# ------------------------------------------------------------------------------------------------------------
# 3-D: segmentation regions and detection boxes
# ------------------------------------------------------------------------------------------------------------


def tiny_dynunet() -> nn.Module:
    torch.manual_seed(0)
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kernel_size=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        upsample_kernel_size=[[2, 2, 2]] * 2,
        filters=[4, 8, 16],
        deep_supervision=True,
        deep_supr_num=1,
    )


def test_default_layer_of_a_dynunet_is_its_bottleneck() -> None:
    assert default_layer(tiny_dynunet()) == "bottleneck"


def test_region_score_is_the_mean_logit_over_the_mask() -> None:
    network = tiny_dynunet().eval()
    image = torch.randn(1, 1, 16, 16, 16)
    mask = np.zeros((16, 16, 16), bool)
    mask[4:8, 5:9, 6:10] = True
    with torch.no_grad():
        expected = network(image)[0, 1][torch.from_numpy(mask)].mean()
        score = score_module(network, RegionTarget(1, mask), (16, 16, 16))(image)
    assert score.shape == (1,)
    assert float(score[0]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_region_map_has_the_volume_shape(method: str) -> None:
    network = tiny_dynunet()
    image = torch.randn(1, 1, 16, 16, 16)
    mask = np.zeros((16, 16, 16), bool)
    mask[4:8, 4:8, 4:8] = True
    attribution = explain(network, image, RegionTarget(1, mask), method, window=4, stride=4, steps=4)
    assert attribution.shape == (16, 16, 16)
    assert attribution.dtype == np.float32
    assert 0.0 <= attribution.min() <= attribution.max() <= 1.0
    assert attribution.max() > 0


def record_input_shapes(network: nn.Module) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    network.register_forward_pre_hook(lambda _module, inputs: shapes.append(tuple(inputs[0].shape[2:])))
    return shapes


@pytest.mark.parametrize("method", ["gradcam++", "occlusion", "integrated_gradients"])
def test_explain_region_feeds_the_network_only_patches(method: str) -> None:
    """Memory follows the patch: the network never sees the whole (larger) volume."""
    network = tiny_dynunet()
    shapes = record_input_shapes(network)
    image = torch.randn(1, 1, 40, 32, 24)
    mask = np.zeros((40, 32, 24), bool)
    mask[30:36, 2:6, 10:14] = True  # near the high end of axis 0 and the low end of axis 1
    attribution = explain_region(network, image, RegionTarget(1, mask), method, (16, 16, 16), window=8, stride=8)
    assert shapes
    assert set(shapes) == {(16, 16, 16)}
    assert attribution.shape == (40, 32, 24)
    window = np.zeros(attribution.shape, bool)
    window[24:40, 0:16, 4:20] = True  # centred on the box, moved inside the volume
    assert attribution[~window].max() == 0.0
    assert attribution[window].max() == pytest.approx(1.0)


def test_explain_region_pads_a_volume_smaller_than_the_patch() -> None:
    network = tiny_dynunet()
    shapes = record_input_shapes(network)
    image = torch.randn(1, 1, 12, 20, 16)
    mask = np.zeros((12, 20, 16), bool)
    mask[3:6, 8:12, 5:9] = True
    attribution = explain_region(network, image, RegionTarget(1, mask), "gradcam", (16, 16, 16))
    assert set(shapes) == {(16, 16, 16)}
    assert attribution.shape == (12, 20, 16)
    assert attribution[:, :2].max() == 0.0  # axis 1 window is 2..18
    assert attribution[:, 18:].max() == 0.0


def tiny_detector_network() -> nn.Module:
    torch.manual_seed(0)
    spec = DetectorSpec(layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), fpn_channels=8, returned_layers=(1, 2))
    return build_detector(spec).network


def test_box_score_is_the_largest_logit_of_anchors_centred_in_the_box() -> None:
    network = tiny_detector_network().eval()
    image = torch.randn(1, 1, 32, 32, 32)
    box = BoxTarget(box=(4.0, 8.0, 4.0, 14.0, 14.0, 20.0))
    with torch.no_grad():
        maps = network(image)["classification"]
        expected = []
        for level in maps:  # num_classes 1: one channel per anchor shape
            stride = 32 // level.shape[2]
            centres = np.arange(level.shape[2]) * stride + stride // 2
            inside = [(centres >= box.box[a]) & (centres <= box.box[a + 3]) for a in range(3)]
            if all(axis.any() for axis in inside):
                expected.append(float(level[0][:, inside[0]][:, :, inside[1]][:, :, :, inside[2]].max()))
        score = score_module(network, box, (32, 32, 32))(image)
    assert expected
    assert float(score[0]) == pytest.approx(max(expected), rel=1e-5)


def test_box_map_of_a_detector() -> None:
    detector = build_detector(
        DetectorSpec(layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), fpn_channels=8, returned_layers=(1, 2))
    )
    assert default_layer(detector) == "feature_extractor.stages.1"
    image = torch.randn(1, 1, 32, 32, 32)
    attribution = explain(detector, image, BoxTarget(box=(8.0, 8.0, 8.0, 16.0, 16.0, 16.0)), "gradcam")
    assert attribution.shape == (32, 32, 32)
    assert 0.0 <= attribution.min() <= attribution.max() <= 1.0
