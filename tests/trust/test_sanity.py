"""Model-parameter randomisation (Adebayo et al. 2018): a faithful map changes when the weights are randomised."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tests.trust.test_explain import positive_image, train_quadrant_classifier
from vesalius.engines.classification.networks import MultiHeadClassifier
from vesalius.trust import sanity
from vesalius.trust.sanity import SanityReport, parameter_randomisation_check, randomised_copy


@pytest.fixture(scope="module")
def classifier() -> MultiHeadClassifier:
    return train_quadrant_classifier()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return positive_image(np.random.default_rng(5), 1, 2)


def test_randomised_copy_redraws_every_parameter_and_leaves_the_original(classifier: MultiHeadClassifier) -> None:
    before = {name: p.detach().clone() for name, p in classifier.state_dict().items()}
    copied = randomised_copy(classifier, seed=0)
    after = dict(copied.named_parameters())
    for name, parameter in classifier.named_parameters():
        assert torch.equal(parameter, before[name])  # the trained model is untouched
        if parameter.numel() > 1 and float(parameter.detach().std()) > 0:
            assert not torch.allclose(after[name], parameter), name
    for name, buffer in copied.named_buffers():
        if name.endswith("running_mean"):
            assert torch.count_nonzero(buffer) == 0, name
        if name.endswith("running_var"):
            assert torch.all(buffer == 1), name


def test_randomised_copy_is_reproducible_and_keeps_the_global_random_state() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Linear(3, 2))
    conv = "0.weight"
    state = torch.random.get_rng_state()
    first, second = randomised_copy(model, seed=3), randomised_copy(model, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    third = randomised_copy(model, seed=4)
    assert not torch.equal(first.get_parameter(conv), third.get_parameter(conv))


def test_parameters_without_reset_are_drawn_from_a_normal() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1000))

    copied = randomised_copy(Scale(), seed=0)
    gain = copied.get_parameter("gain")
    assert abs(float(gain.detach().mean())) < 0.01
    assert float(gain.detach().std()) == pytest.approx(sanity.NORMAL_INIT_STD, rel=0.15)


@pytest.mark.parametrize(
    ("method", "options"),
    [("gradcam", {"layer": "backbone.layer3"}), ("gradcam++", {"layer": "backbone.layer3"}), ("occlusion", {})],
)
def test_maps_of_the_trained_model_change_when_weights_are_randomised(
    classifier: MultiHeadClassifier, image: torch.Tensor, method: str, options: dict[str, str]
) -> None:
    """Grad-CAM is checked on layer3 (4x4): layer4's 2x2 map, upsampled, leaves too few distinct ranks."""
    report = parameter_randomisation_check(classifier, image, 1, method, layer=options.get("layer"))
    assert report.method == method
    assert report.n_values == image[0, 0].numel()
    assert report.spearman < report.threshold
    assert report.passed


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_a_model_checked_against_itself_fails(
    classifier: MultiHeadClassifier, image: torch.Tensor, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check can fail: with 'randomisation' that keeps the weights, the maps agree perfectly."""
    monkeypatch.setattr(sanity, "randomised_copy", lambda model, seed=0: copy.deepcopy(model))
    report = parameter_randomisation_check(classifier, image, 1, method)
    assert report.spearman == pytest.approx(1.0, abs=1e-6)
    assert not report.passed
    assert report.note is None


def test_a_constant_map_reports_zero_with_a_note(image: torch.Tensor) -> None:
    """A network blind to its input gives a flat map: no rank order, so spearman is 0, not NaN."""

    class Blind(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bias = nn.Parameter(torch.zeros(2))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            blind: torch.Tensor = self.conv(images).mean(dim=(2, 3)) * 0 + self.bias
            return blind

    report = parameter_randomisation_check(Blind(), image, 0, "occlusion")
    assert report.spearman == 0.0
    assert report.note is not None
    assert "constant" in report.note


def test_report_is_frozen() -> None:
    report = SanityReport(method="gradcam", spearman=0.1, passed=True, n_values=4)
    assert report.threshold == 0.5
    with pytest.raises(ValidationError):
        report.spearman = 0.9
