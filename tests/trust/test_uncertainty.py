"""Uncertainty: moments equal a direct computation, MC dropout samples and then leaves no trace, TTA of a
symmetric input agrees with itself, segmentation maps lie on the input grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from tests.engines.classification.factory import random_classifier_package
from tests.engines.segmentation.test_predict import make_package, oblique_volume
from vesalius.core.errors import InputError
from vesalius.engines.classification.engine import Classifier
from vesalius.engines.classification.plan import make_classification_plan
from vesalius.engines.segmentation.predict import Predictor
from vesalius.trust.uncertainty import (
    ProbabilityMoments,
    classification_uncertainty,
    mc_dropout,
    segmentation_uncertainty,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def random_probabilities(rng: np.random.Generator, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    logits = rng.normal(0.0, 2.0, shape)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


def entropy(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    safe = np.where(p > 0, p, 1.0)
    result: npt.NDArray[np.float64] = -(p * np.log(safe)).sum(axis=1)
    return result


def test_moments_equal_a_direct_computation_on_stacked_samples() -> None:
    rng = np.random.default_rng(0)
    samples = np.stack([random_probabilities(rng, (2, 3, 4, 5)) for _ in range(7)])  # S, N, K, i, j
    moments = ProbabilityMoments()
    for index, sample in enumerate(samples):
        moments.add(torch.from_numpy(sample) if index % 2 else sample)  # torch or numpy in
    mean = samples.mean(axis=0)
    predictive = entropy(mean)
    expected = np.mean([entropy(s) for s in samples], axis=0)
    assert moments.count == 7
    assert moments.mean.dtype == np.float32
    np.testing.assert_allclose(moments.mean, mean, atol=1e-6)
    np.testing.assert_allclose(moments.predictive_entropy, predictive, atol=1e-5)
    np.testing.assert_allclose(moments.expected_entropy, expected, atol=1e-5)
    np.testing.assert_allclose(moments.mutual_information, predictive - expected, atol=1e-5)
    np.testing.assert_allclose(moments.variance, samples.var(axis=0).mean(axis=1), atol=1e-6)
    assert moments.mutual_information.shape == (2, 4, 5)
    assert (moments.mutual_information > 1e-3).any()  # samples disagree, so some MI is visible


def test_mutual_information_and_variance_are_zero_when_samples_agree() -> None:
    sample = random_probabilities(np.random.default_rng(1), (4, 3))
    sample[0] = [1.0, 0.0, 0.0]  # a certain case: 0 log 0 counts as 0
    moments = ProbabilityMoments()
    for _ in range(5):
        moments.add(sample)
    np.testing.assert_allclose(moments.mutual_information, 0.0, atol=1e-6)
    np.testing.assert_allclose(moments.variance, 0.0, atol=1e-6)
    np.testing.assert_allclose(moments.predictive_entropy, entropy(sample), atol=1e-6)
    assert moments.predictive_entropy[0] == pytest.approx(0.0, abs=1e-7)


def test_moments_refuse_samples_of_another_shape() -> None:
    moments = ProbabilityMoments()
    moments.add(np.full((2, 2), 0.5))
    with pytest.raises(InputError, match="shape"):
        moments.add(np.full((3, 2), 0.5))
    with pytest.raises(InputError, match="no probability sample"):
        _ = ProbabilityMoments().mean


class WithBatchNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU())
        self.dropout = torch.nn.Dropout(0.0)  # as shipped: trained without dropout
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.dropout(self.features(x)))
        return out


def test_mc_dropout_injects_sampling_and_leaves_no_trace() -> None:
    torch.manual_seed(0)
    model = WithBatchNorm()
    model.train()
    model(torch.randn(32, 6))  # give BatchNorm running statistics of its own
    model.eval()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 6)
    with torch.no_grad():
        before = model(x)
        with mc_dropout(model, p=0.5, modules=["features"]) as sites:
            first, second = model(x), model(x)
            model.eval()  # inference code calls eval(); injected dropout must survive it
            third = model(x)
            assert not model.features[1].training  # BatchNorm keeps using its running statistics
        after = model(x)
    assert sites == ["features"]
    assert not torch.allclose(first, second)
    assert not torch.allclose(second, third)
    assert torch.equal(before, after)
    assert not model.training
    assert not any(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(stats[k], v) for k, v in model.state_dict().items())


def test_mc_dropout_switches_on_existing_dropout_without_injecting() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Dropout(0.3), torch.nn.Linear(32, 2)).eval()
    x = torch.randn(3, 6)
    with torch.no_grad(), mc_dropout(model) as sites:
        assert sites == ["1"]
        assert model[1].training
        assert not model[0].training
        assert not torch.allclose(model(x), model(x))
    assert not model[1].training


def test_mc_dropout_names_an_unknown_module() -> None:
    with pytest.raises(InputError, match="no module 'nowhere'"), mc_dropout(torch.nn.Linear(2, 2), modules=["nowhere"]):
        pass


def make_classifier(folder: Path, seed: int, temperature: float = 1.5) -> Classifier:
    """A random ResNet-10 (width 1/8) on 16 x 16 images, 3 classes, flips on both axes."""
    plan = make_classification_plan(
        dataset_name="Tiny",
        kind="multiclass",
        class_names=["a", "b", "c"],
        class_counts=[10, 10, 10],
        median_size=[16, 16],
        channels=1,
        architecture="resnet10",
        input_size=[16, 16],
        width=0.125,
        flip_axes=[0, 1],
    )
    random_classifier_package(folder, plan, seed=seed, postprocessing={"temperature": temperature, "threshold": None})
    return Classifier(folder, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return make_classifier(tmp_path_factory.mktemp("cls") / "model", seed=0)


def images(seed: int, n: int = 4) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(0.0, 1.0, (n, 1, 16, 16)).astype(np.float32)


def test_softmax_baseline_is_the_classifiers_own_calibrated_prediction(classifier: Classifier) -> None:
    batch = images(0)
    result = classification_uncertainty(classifier, batch, "softmax")
    from vesalius.engines.classification.trainer import predict_logits

    logits = predict_logits(classifier.network, batch, classifier.device, None, flip_axes=(0, 1))["main"]
    scaled = np.exp(logits / 1.5) / np.exp(logits / 1.5).sum(axis=1, keepdims=True)  # temperature 1.5
    np.testing.assert_allclose(result.probabilities, scaled, atol=1e-5)
    np.testing.assert_allclose(result.max_probability, scaled.max(axis=1), atol=1e-5)
    np.testing.assert_allclose(result.least_confidence, 1 - scaled.max(axis=1), atol=1e-5)
    assert result.samples == 1
    np.testing.assert_allclose(result.mutual_information, 0.0, atol=1e-6)


def test_tta_of_a_flip_symmetric_image_has_zero_variance(classifier: Classifier) -> None:
    base = images(1, n=3)
    symmetric = (base + base[:, :, ::-1] + base[:, :, :, ::-1] + base[:, :, ::-1, ::-1]).astype(np.float32)
    result = classification_uncertainty(classifier, np.ascontiguousarray(symmetric), "tta")
    assert result.samples == 4  # identity, flip 0, flip 1, both
    np.testing.assert_allclose(result.variance, 0.0, atol=1e-9)
    np.testing.assert_allclose(result.mutual_information, 0.0, atol=1e-5)
    asymmetric = classification_uncertainty(classifier, images(2, n=3), "tta")
    assert (asymmetric.variance > 1e-6).all()  # the check can fail: flips of a random image disagree


def test_mc_dropout_classification_samples_differ_and_are_reproducible(classifier: Classifier) -> None:
    batch = images(3)
    first = classification_uncertainty(classifier, batch, "mc_dropout", passes=6, seed=5)
    again = classification_uncertainty(classifier, batch, "mc_dropout", passes=6, seed=5)
    assert first.samples == 6
    assert (first.mutual_information > 0).all()
    assert (first.variance > 0).all()
    np.testing.assert_array_equal(first.probabilities, again.probabilities)
    np.testing.assert_allclose(first.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert first.score("mutual_information") is first.mutual_information


def test_ensemble_of_identical_members_has_zero_mutual_information(classifier: Classifier, tmp_path: Path) -> None:
    twin = make_classifier(tmp_path / "twin", seed=0)
    other = make_classifier(tmp_path / "other", seed=1)
    batch = images(4)
    same = classification_uncertainty(classifier, batch, "ensemble", members=[classifier, twin])
    np.testing.assert_allclose(same.mutual_information, 0.0, atol=1e-6)
    mixed = classification_uncertainty(classifier, batch, "ensemble", members=[classifier, other])
    assert (mixed.mutual_information > 0).all()
    with pytest.raises(InputError, match="members"):
        classification_uncertainty(classifier, batch, "ensemble")


def test_segmentation_maps_lie_on_the_input_grid(tmp_path: Path) -> None:
    volume = oblique_volume()
    predictor = Predictor(make_package(tmp_path / "fold0", seed=0), tta=False)
    result = segmentation_uncertainty(predictor, volume, "mc_dropout", passes=3)
    for grid in (result.probabilities, result.labels, result.entropy, result.mutual_information, result.variance):
        assert grid.shape == volume.shape
        assert np.array_equal(grid.affine, volume.affine)
    assert result.probabilities.array.shape == (*volume.shape, 3)
    np.testing.assert_allclose(result.probabilities.array.sum(axis=-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(result.labels.array, result.probabilities.array.argmax(axis=-1))
    assert result.mutual_information.array.max() > 0  # dropout was injected into the DynUNet
    foreground = result.labels.array > 0
    expected = result.entropy.array[foreground].mean() if foreground.any() else 0.0
    assert result.foreground_entropy == pytest.approx(float(expected), rel=1e-5)
    tta = segmentation_uncertainty(predictor, volume, "tta")
    assert tta.samples == 8
    assert tta.entropy.shape == volume.shape


def test_segmentation_ensemble_of_identical_packages_has_zero_mutual_information(tmp_path: Path) -> None:
    volume = oblique_volume(seed=1)
    same = Predictor([make_package(tmp_path / "a", seed=0), make_package(tmp_path / "b", seed=0)], tta=False)
    result = segmentation_uncertainty(same, volume, "ensemble")
    assert result.samples == 2
    np.testing.assert_allclose(result.mutual_information.array, 0.0, atol=1e-6)
    np.testing.assert_allclose(result.variance.array, 0.0, atol=1e-9)
    assert result.foreground_mutual_information == pytest.approx(0.0, abs=1e-6)
    different = Predictor([make_package(tmp_path / "c", seed=0), make_package(tmp_path / "d", seed=1)], tta=False)
    assert segmentation_uncertainty(different, volume, "ensemble").mutual_information.array.max() > 1e-4
