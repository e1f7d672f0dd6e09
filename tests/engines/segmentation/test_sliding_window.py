"""Our sliding window: nnU-Net tiling, separable Gaussian blending, MONAI-equivalent output, reduced precision."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from monai.inferers.utils import sliding_window_inference

from tests.engines.segmentation.test_predict import tiny_network
from vesalius.core.errors import InputError
from vesalius.engines.common.precision import autocast_dtype, cpu_supports_bf16, pick_device
from vesalius.engines.segmentation.sliding_window import (
    gaussian_weights,
    sliding_window_probabilities,
    window_starts,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@given(size=st.integers(1, 400), patch=st.integers(1, 160), overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75]))
def test_windows_cover_the_axis_evenly_with_bounded_steps(size: int, patch: int, overlap: float) -> None:
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0
    if size <= patch:
        assert starts == [0]
        return
    assert starts[-1] == size - patch  # flush with the end: no window hangs over the border
    steps = np.diff(starts)
    assert (steps >= 1).all()
    assert (steps <= max(1, int(patch * (1 - overlap)))).all()
    assert steps.max() - steps.min() <= 1  # spread evenly
    assert len(starts) - 1 < (size - patch) / max(1, int(patch * (1 - overlap))) + 1  # no more windows than needed


def test_an_out_of_range_overlap_is_refused() -> None:
    with pytest.raises(InputError, match="overlap"):
        window_starts(100, 10, 1.0)


def test_the_gaussian_peaks_in_the_centre_and_never_reaches_zero() -> None:
    weights = gaussian_weights(64)
    assert weights.max() == pytest.approx(1.0, abs=3e-3)  # centre between two voxels
    assert np.argmax(weights) in (31, 32)
    assert weights.min() > 0
    np.testing.assert_allclose(weights, weights[::-1])
    assert (gaussian_weights(64, gaussian=False) == 1).all()


def _reference(network: torch.nn.Module, image: torch.Tensor, patch: int, overlap: float) -> torch.Tensor:
    """Brute force: a full-volume weight map, no separability, logits blended then softmax."""
    shape = image.shape[2:]
    starts = [window_starts(s, patch, overlap) for s in shape]
    g = torch.from_numpy(gaussian_weights(patch)).float()
    blend = g[:, None, None] * g[None, :, None] * g[None, None, :]
    total = torch.zeros((3, *shape))
    weight = torch.zeros(shape)
    with torch.no_grad():
        for i, j, k in itertools.product(*starts):
            window = image[:, :, i : i + patch, j : j + patch, k : k + patch]
            total[:, i : i + patch, j : j + patch, k : k + patch] += network(window)[0] * blend
            weight[i : i + patch, j : j + patch, k : k + patch] += blend
    return torch.softmax(total / weight, dim=0)[None]


def test_separable_normalisation_equals_a_full_weight_map() -> None:
    network = tiny_network()
    image = torch.randn(1, 1, 29, 21, 40, generator=torch.Generator().manual_seed(1))
    ours = sliding_window_probabilities(network, image, (16, 16, 16), overlap=0.5, batch_size=3)
    torch.testing.assert_close(ours, _reference(network, image, 16, 0.5), atol=1e-5, rtol=1e-4)


def test_matches_monai_sliding_window_inference_where_both_tile_alike() -> None:
    """Same windows, same average; the Gaussian differs on purpose: MONAI floors it at 1e-3, nnU-Net does not."""
    network = tiny_network()
    image = torch.randn(1, 1, 24, 24, 32, generator=torch.Generator().manual_seed(2))
    ours = sliding_window_probabilities(network, image, (16, 16, 16), overlap=0.5, gaussian=False)
    with torch.no_grad():
        logits = sliding_window_inference(image, (16, 16, 16), 1, network, overlap=0.5, mode="constant")
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(ours, torch.softmax(logits, dim=1), atol=1e-5, rtol=1e-4)


def test_bfloat16_autocast_agrees_with_float32() -> None:
    network = tiny_network()
    image = torch.randn(1, 1, 24, 20, 18, generator=torch.Generator().manual_seed(5))
    exact = sliding_window_probabilities(network, image, (16, 16, 16))
    reduced = sliding_window_probabilities(network, image, (16, 16, 16), dtype=torch.bfloat16)
    assert reduced.dtype == torch.float32
    assert float((exact - reduced).abs().max()) < 0.05
    assert float((exact.argmax(1) == reduced.argmax(1)).float().mean()) > 0.97


def test_precision_choices() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if cpu_supports_bf16() else None)
    with pytest.raises(InputError, match="float16"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(InputError, match="precision"):
        autocast_dtype(cpu, "int4")
    assert pick_device("cpu") == cpu
    with pytest.raises(InputError, match="device"):
        pick_device("quantum")
