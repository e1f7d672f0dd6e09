"""The RetinaNet detector: its feature pyramid, finite focal and GIoU losses, gradients, and inference output."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from vesalius.engines.detection.network import DetectorSpec, ResNetFPN, build_detector, count_parameters

TINY = DetectorSpec(
    layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), fpn_channels=16, returned_layers=(1, 2), sampler_batch_per_image=32
)


def targets(*boxes: list[float]) -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([box]) if box else torch.zeros(0, 6), "labels": torch.zeros(1 if box else 0).long()}
        for box in boxes
    ]


def test_the_default_spec_has_four_levels_from_4_to_32_voxels() -> None:
    spec = DetectorSpec()
    assert spec.strides == [(4, 4, 4), (8, 8, 8), (16, 16, 16), (32, 32, 32)]
    assert spec.size_divisible == (32, 32, 32)
    assert spec.feature_map_scales == [1, 2, 4, 8]
    assert 1_000_000 < count_parameters(build_detector(spec)) < 10_000_000


def test_an_anisotropic_stem_keeps_through_plane_resolution() -> None:
    spec = DetectorSpec(conv1_stride=(2, 2, 1), returned_layers=(1, 2))
    assert spec.strides == [(4, 4, 2), (8, 8, 4), (16, 16, 8)]


def test_the_feature_pyramid_returns_one_map_per_level_at_its_stride() -> None:
    extractor = ResNetFPN(TINY)
    maps = extractor(torch.rand(1, 1, 32, 32, 32))
    assert list(maps) == ["0", "1", "pool"]
    assert [tuple(m.shape) for m in maps.values()] == [(1, 16, 8, 8, 8), (1, 16, 4, 4, 4), (1, 16, 2, 2, 2)]
    assert extractor.out_channels == 16


def test_training_forward_gives_finite_focal_and_giou_losses_that_backpropagate() -> None:
    torch.manual_seed(0)
    detector = build_detector(TINY)
    detector.train()
    losses = detector(torch.rand(2, 1, 32, 32, 32), targets([10.0, 10.0, 10.0, 16.0, 16.0, 16.0], []))
    assert set(losses) == {"classification", "box_regression"}
    values = {name: float(value.detach()) for name, value in losses.items()}
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    assert 0 < values["box_regression"] < 2  # GIoU loss lies in [0, 2]
    (losses["classification"] + losses["box_regression"]).backward()
    stem = detector.network.feature_extractor.stem[0].weight.grad
    assert stem is not None
    assert float(stem.abs().sum()) > 0


def test_inference_returns_boxes_scores_and_labels() -> None:
    detector = build_detector(TINY)
    detector.eval()
    with torch.no_grad():
        found = detector(torch.rand(1, 1, 32, 32, 32))[0]
    assert found["boxes"].shape[1] == 6
    assert found["labels_scores"].shape[0] == found["boxes"].shape[0] <= TINY.detections_per_image


@pytest.mark.parametrize("returned", [(), (2, 1), (0, 1), (4, 5)])
def test_returned_layers_must_be_increasing_stages(returned: tuple[int, ...]) -> None:
    with pytest.raises(ValidationError):
        DetectorSpec(returned_layers=returned)
