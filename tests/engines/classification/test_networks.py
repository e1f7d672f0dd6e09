"""Every listed backbone builds in 2D and 3D and feeds one linear head per target from the same features."""

from __future__ import annotations

import pytest
import torch

from vesalius.core.errors import InputError
from vesalius.engines.classification.networks import (
    ARCHITECTURES,
    ClassificationNetwork,
    NetworkSpec,
    head_sizes,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_gives_every_head_in_2d(architecture: str) -> None:
    spec = NetworkSpec(
        architecture=architecture,  # type: ignore[arg-type]
        spatial_dims=2,
        in_channels=3,
        input_size=[64, 64],
        heads={"main": 5, "lesion": 3},
        width=0.25,
    )
    network = ClassificationNetwork.build(spec).eval()
    with torch.no_grad():
        heads = network.forward_heads(torch.randn(2, 3, 64, 64))
        main = network(torch.randn(2, 3, 64, 64))
    assert {name: tuple(t.shape) for name, t in heads.items()} == {"main": (2, 5), "lesion": (2, 3)}
    assert tuple(main.shape) == (2, 5)


@pytest.mark.parametrize("architecture", ["resnet10", "densenet121", "vit"])
def test_volumes_take_3d_backbones(architecture: str) -> None:
    spec = NetworkSpec(
        architecture=architecture,  # type: ignore[arg-type]
        spatial_dims=3,
        in_channels=1,
        input_size=[32, 32, 32],
        heads={"main": 2},
        width=0.25,
    )
    network = ClassificationNetwork.build(spec).eval()
    with torch.no_grad():
        assert tuple(network(torch.randn(1, 1, 32, 32, 32)).shape) == (1, 2)


def test_width_scales_a_resnet() -> None:
    def count(width: float) -> int:
        spec = NetworkSpec(spatial_dims=3, in_channels=1, input_size=[64, 64, 64], heads={"main": 2}, width=width)
        return ClassificationNetwork.parameter_count(ClassificationNetwork.build(spec))

    assert count(0.5) < count(1.0) / 3  # convolutions scale with width squared
    assert count(0.5) * 2 < 25_000_000  # float16 bytes: a 3D ResNet-18 at half width fits a 25 MB package


def test_head_sizes_follow_the_task() -> None:
    grades = ["0", "1", "2", "3", "4"]
    assert head_sizes("binary", ["normal", "pneumonia"], {}) == {"main": 2}
    assert head_sizes("ordinal", grades, {}) == {"main": 4}
    assert head_sizes("multilabel", ["a", "b", "c"], {"grade": grades}) == {"main": 3, "grade": 5}
    with pytest.raises(InputError, match="head"):
        head_sizes("regression", grades, {})


def test_a_head_set_without_main_is_refused() -> None:
    spec = NetworkSpec(spatial_dims=2, in_channels=1, input_size=[32, 32], heads={"grade": 5})
    with pytest.raises(InputError, match="main"):
        ClassificationNetwork.build(spec)
