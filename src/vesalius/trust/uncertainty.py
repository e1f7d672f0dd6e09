"""How sure is the model? Predictive entropy, mutual information (BALD) and variance over sampled predictions.

A sample is one prediction of the same input under a perturbation that should not change the answer: a
dropout mask (MC dropout, Gal & Ghahramani 2016), a flip (test-time augmentation) or another fold (deep
ensemble). Over S samples p_s (K classes):

- predictive entropy H[mean p]: total uncertainty (also high for inputs the model is sure are ambiguous);
- expected entropy mean H[p_s]: the aleatoric part;
- mutual information H[mean p] - mean H[p_s] (BALD): the epistemic part, zero when every sample agrees;
- variance: the per-class variance across samples, averaged over classes.

Entropies are in nats. Shipped models were trained without dropout (p = 0), so MC dropout injects it at test
time (Ledda et al. 2023, "Dropout injection at test time for post hoc uncertainty quantification").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from scipy.special import xlogy

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.classification.engine import Classifier, _calibrated
from vesalius.engines.classification.networks import MultiHeadClassifier
from vesalius.engines.classification.trainer import predict_logits, tta_flip_axes
from vesalius.engines.segmentation.postprocess import channels_first, to_input_grid
from vesalius.engines.segmentation.predict import Predictor
from vesalius.engines.segmentation.preprocess import preprocess_image
from vesalius.engines.segmentation.sliding_window import mirror_sets, sliding_window_probabilities

FloatArray = npt.NDArray[np.float32]
ClassificationMethod = Literal["mc_dropout", "tta", "ensemble", "softmax"]
SegmentationMethod = Literal["mc_dropout", "tta", "ensemble"]

__all__ = [
    "CaseUncertainty",
    "ProbabilityMoments",
    "SegmentationUncertainty",
    "classification_uncertainty",
    "mc_dropout",
    "segmentation_uncertainty",
]


def _default_sites(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, bool]]:
    """(name, module, on its input) where dropout is injected when the caller names none.

    MultiHeadClassifier: the backbone's pooled features (where its own, p = 0, dropout sits). DynUNet: the
    bottleneck and each decoder block's output. Anything else: the input of its last layer with parameters,
    i.e. dropout before the classifier or the output convolution.
    """
    from monai.networks.nets.dynunet import DynUNet

    if isinstance(model, MultiHeadClassifier):
        return [("backbone", model.backbone, False)]
    if isinstance(model, DynUNet):
        decoder = [(f"upsamples.{i}", block, False) for i, block in enumerate(model.upsamples)]
        return [("bottleneck", model.bottleneck, False), *decoder]
    layers = [(n, m) for n, m in model.named_modules() if not list(m.children()) and list(m.parameters())]
    if not layers:
        raise InputError(f"mc_dropout: {type(model).__name__} has no layer with parameters to put dropout before")
    name, last = layers[-1]
    return [(name, last, True)]


def _named_sites(model: torch.nn.Module, modules: Sequence[str]) -> list[tuple[str, torch.nn.Module, bool]]:
    sites = []
    for name in modules:
        try:
            sites.append((name, model.get_submodule(name), False))
        except AttributeError as error:
            raise InputError(f"mc_dropout: the model has no module {name!r} ({error})") from error
    return sites


def _always_on(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """Keeps an existing dropout sampling when inference code calls ``eval()`` (predict_logits does)."""
    if module.training:
        return output
    module.training = True
    try:
        return module.forward(*args)  # forward, not __call__: the hook must not run again
    finally:
        module.training = False


def _inject(p: float, on_input: bool) -> Any:
    def drop(tensor: Any, where: str) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"mc_dropout: the {where} of an injection site must be one tensor; got {type(tensor)}")
        return torch.nn.functional.dropout(tensor, p, training=True)

    if on_input:
        return lambda _module, args: (drop(args[0], "input"), *args[1:])
    return lambda _module, _args, output: drop(output, "output")


@contextmanager
def mc_dropout(model: torch.nn.Module, *, p: float = 0.1, modules: Sequence[str] | None = None) -> Iterator[list[str]]:
    """Sample dropout at inference inside the block; yields the names of the modules that drop.

    Dropout layers with p > 0 sample (train mode; everything else, BatchNorm included, stays as it was). When
    the model has none, or ``modules`` names sites, ``p`` is injected there by forward hooks (defaults: see
    ``_default_sites``). On exit hooks are removed and every module's mode is restored.
    """
    if not 0.0 < p < 1.0:
        raise InputError(f"mc_dropout: p must be in (0, 1); got {p}")
    modes = {module: module.training for module in model.modules()}
    dropout = torch.nn.modules.dropout._DropoutNd
    active = [(name, m) for name, m in model.named_modules() if isinstance(m, dropout) and m.p > 0]
    handles = []
    try:
        for _, layer in active:
            layer.train()
            handles.append(layer.register_forward_hook(_always_on))
        sites = [] if active and modules is None else _named_sites(model, modules or []) or _default_sites(model)
        for _, site, on_input in sites:
            hook = _inject(p, on_input)
            handles.append(site.register_forward_pre_hook(hook) if on_input else site.register_forward_hook(hook))
        yield [name for name, _ in active] + [name for name, _, _ in sites]
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training


def _f32(values: Any) -> FloatArray:
    return np.asarray(values, dtype=np.float32)


def _as_numpy(probabilities: torch.Tensor | npt.ArrayLike) -> FloatArray:
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().float().cpu().numpy()
    return np.asarray(probabilities, dtype=np.float32)


class ProbabilityMoments:
    """Running moments over S probability samples (N, K, *spatial): memory O(K x voxels) whatever S is.

    Keeps three float32 arrays, never the samples: the running mean of p and sum of squared deviations
    (Welford's update: sum p and sum p^2 carried without the cancellation that E[p^2] - E[p]^2 suffers in
    float32), and sum p log p.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: FloatArray | None = None
        self._deviations: FloatArray | None = None
        self._plogp: FloatArray | None = None

    def add(self, probabilities: torch.Tensor | npt.ArrayLike) -> None:
        """One sample, classes on axis 1."""
        values = _as_numpy(probabilities)
        if values.ndim < 2:
            raise InputError(f"probabilities must be (N, K, *spatial); got shape {values.shape}")
        if self._mean is None or self._deviations is None or self._plogp is None:
            self._mean, self._deviations = values.copy(), np.zeros_like(values)
            self._plogp = xlogy(values, values).astype(np.float32)
        elif values.shape != self._mean.shape:
            raise InputError(f"sample {self.count + 1} has shape {values.shape}; earlier ones {self._mean.shape}")
        else:
            delta = values - self._mean
            self._mean += delta / np.float32(self.count + 1)
            delta *= values - self._mean
            self._deviations += delta
            self._plogp += xlogy(values, values).astype(np.float32)
        self.count += 1

    def _moments(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        if self._mean is None or self._deviations is None or self._plogp is None:
            raise InputError("no probability sample was added")
        return self._mean, self._deviations, self._plogp

    @property
    def mean(self) -> FloatArray:
        """(N, K, *spatial) mean probability."""
        return self._moments()[0].copy()

    @property
    def predictive_entropy(self) -> FloatArray:
        """(N, *spatial) entropy of the mean prediction."""
        mean = self._moments()[0]
        return _f32(np.maximum(-xlogy(mean, mean).sum(axis=1), 0.0))

    @property
    def expected_entropy(self) -> FloatArray:
        """(N, *spatial) mean entropy of the samples."""
        return _f32(np.maximum(-self._moments()[2].sum(axis=1) / np.float32(self.count), 0.0))

    @property
    def mutual_information(self) -> FloatArray:
        """(N, *spatial) BALD: predictive minus expected entropy, >= 0 (rounding clipped)."""
        return _f32(np.maximum(self.predictive_entropy - self.expected_entropy, 0.0))

    @property
    def variance(self) -> FloatArray:
        """(N, *spatial) per-class variance across samples (population, ddof 0), averaged over classes."""
        return _f32(np.maximum(self._moments()[1] / np.float32(self.count), 0.0).mean(axis=1))


@dataclass(frozen=True)
class CaseUncertainty:
    """Per-case scores over ``samples`` predictions; higher = less sure, except ``max_probability``."""

    method: str
    samples: int
    probabilities: FloatArray  # (N, K) mean calibrated probabilities
    predictive_entropy: FloatArray
    mutual_information: FloatArray
    variance: FloatArray
    max_probability: FloatArray

    @property
    def least_confidence(self) -> FloatArray:
        """1 - max probability: the softmax baseline score."""
        return (1.0 - self.max_probability).astype(np.float32)

    def score(self, name: str) -> FloatArray:
        """A score by name, e.g. to feed an abstain policy."""
        names = ("predictive_entropy", "mutual_information", "variance", "least_confidence")
        if name not in names:
            raise InputError(f"unknown uncertainty score {name!r}; choose one of {', '.join(names)}")
        value: FloatArray = getattr(self, name)
        return value


def _classifier_probabilities(
    classifier: Classifier, images: FloatArray, flip_axes: tuple[int, ...] | None = None
) -> FloatArray:
    """Calibrated probabilities as the Classifier computes them; ``flip_axes`` None = its own TTA."""
    axes = tta_flip_axes(classifier.plan) if flip_axes is None else flip_axes
    logits = predict_logits(classifier.network, images, classifier.device, classifier.dtype, flip_axes=axes)["main"]
    return np.asarray(_calibrated(classifier.plan, logits, classifier.temperature), dtype=np.float32)


def _classification_samples(
    classifier: Classifier,
    images: FloatArray,
    method: ClassificationMethod,
    passes: int,
    members: Sequence[Classifier] | None,
    flip_axes: Sequence[int] | None = None,
) -> Iterator[FloatArray]:
    if method == "softmax":
        yield _classifier_probabilities(classifier, images)
    elif method == "mc_dropout":
        with mc_dropout(classifier.network):
            for _ in range(passes):
                yield _classifier_probabilities(classifier, images, ())
    elif method == "tta":
        axes = classifier.plan.augmentation.flip_axes if flip_axes is None else list(flip_axes)
        if not axes:
            raise InputError(
                "tta: the plan's augmentation.flip_axes is empty; there is no flip to sample (pass flip_axes)"
            )
        for combo in mirror_sets(axes):  # the identity and every flip combination
            flipped = np.ascontiguousarray(np.flip(images, tuple(a + 2 for a in combo))) if combo else images
            yield _classifier_probabilities(classifier, flipped, ())
    elif method == "ensemble":
        if not members:
            raise InputError("ensemble: pass the fold Classifiers as members=[...]; got none")
        for member in members:
            if member.plan.class_names != classifier.plan.class_names:
                raise InputError(
                    f"ensemble: member classes {member.plan.class_names} differ from {classifier.plan.class_names}"
                )
            yield _classifier_probabilities(member, images)
    else:
        raise InputError(f"unknown uncertainty method {method!r}; choose mc_dropout, tta, ensemble or softmax")


def classification_uncertainty(
    classifier: Classifier,
    images: npt.NDArray[np.float32],
    method: ClassificationMethod,
    *,
    passes: int = 20,
    seed: int = 0,
    members: Sequence[Classifier] | None = None,
    flip_axes: Sequence[int] | None = None,
) -> CaseUncertainty:
    """Mean calibrated probabilities and per-case scores for prepared ``images`` (N, C, *spatial).

    Samples: ``mc_dropout`` = ``passes`` dropout passes; ``tta`` = each combination of the plan's flip axes
    (identity included; ``flip_axes`` overrides them, e.g. a left-right flip for a plan trained without flips);
    ``ensemble`` = one prediction per member Classifier (folds; ``classifier`` only sets
    the expected classes); ``softmax`` = the Classifier's own prediction, once (its TTA if the plan asks).
    """
    if classifier.plan.kind == "multilabel":
        raise InputError("uncertainty needs class probabilities summing to 1; the plan's kind is multilabel")
    if images.ndim < 3:
        raise InputError(f"images must be prepared (N, C, *spatial); got shape {images.shape}")
    if passes < 1:
        raise InputError(f"passes must be >= 1; got {passes}")
    moments = ProbabilityMoments()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for sample in _classification_samples(
            classifier, np.asarray(images, np.float32), method, passes, members, flip_axes
        ):
            moments.add(sample)
    mean = moments.mean
    return CaseUncertainty(
        method=method,
        samples=moments.count,
        probabilities=mean,
        predictive_entropy=moments.predictive_entropy,
        mutual_information=moments.mutual_information,
        variance=moments.variance,
        max_probability=mean.max(axis=1).astype(np.float32),
    )


@dataclass(frozen=True)
class SegmentationUncertainty:
    """Per-voxel maps on the input grid and per-case means inside the predicted foreground (classes > 0)."""

    method: str
    samples: int
    probabilities: Volume  # (i, j, k, K) mean probabilities
    labels: Volume  # argmax of ``probabilities``, no post-processing
    entropy: Volume
    mutual_information: Volume
    variance: Volume
    foreground_entropy: float
    foreground_mutual_information: float
    foreground_variance: float


def _window(predictor: Predictor, network: torch.nn.Module, image: torch.Tensor, mirror: Sequence[int]) -> Any:
    return sliding_window_probabilities(
        network,
        image,
        predictor.plan.patch_size,
        overlap=predictor.overlap,
        gaussian=predictor.gaussian,
        mirror_axes=mirror,
        device=predictor.device,
        batch_size=predictor.batch_size,
        dtype=predictor.dtype,
    )


def _fold_mean(predictor: Predictor, image: torch.Tensor) -> torch.Tensor:
    """The ensemble mean of one plain pass of every fold (no mirroring)."""
    return torch.stack([_window(predictor, network, image, ()) for network in predictor.networks]).mean(dim=0)


def _segmentation_samples(
    predictor: Predictor, image: torch.Tensor, method: SegmentationMethod, passes: int
) -> Iterator[torch.Tensor]:
    """Model-space (1, K, i, j, k) samples; each averages the folds except in ``ensemble``."""
    if method == "ensemble":
        for network, plan in zip(predictor.networks, predictor.plans, strict=True):
            yield _window(predictor, network, image, plan.augmentation.mirror_axes if predictor.tta else ())
    elif method == "tta":
        axes = predictor.plan.augmentation.mirror_axes
        if not axes:
            raise InputError("tta: the plan's augmentation.mirror_axes is empty; there is no mirror to sample")
        for combo in mirror_sets(axes):
            dims = [axis + 2 for axis in combo]
            flipped = torch.flip(image, dims) if dims else image
            sample = _fold_mean(predictor, flipped)
            yield torch.flip(sample, dims) if dims else sample
    elif method == "mc_dropout":
        with ExitStack() as stack:
            for network in predictor.networks:
                stack.enter_context(mc_dropout(network))
            for _ in range(passes):
                yield _fold_mean(predictor, image)
    else:
        raise InputError(f"unknown uncertainty method {method!r}; choose mc_dropout, tta or ensemble")


def _foreground_mean(values: FloatArray, foreground: npt.NDArray[np.bool_]) -> float:
    return float(values[foreground].mean()) if foreground.any() else 0.0


def segmentation_uncertainty(
    predictor: Predictor,
    volume: Volume,
    method: SegmentationMethod,
    *,
    passes: int = 8,
    seed: int = 0,
) -> SegmentationUncertainty:
    """Per-voxel uncertainty maps on exactly ``volume``'s grid, preprocessed and inverted as Predictor does.

    Samples: ``tta`` = each mirror combination of the plan's axes; ``ensemble`` = each fold of the predictor
    (mirrored as the predictor is set); ``mc_dropout`` = ``passes`` sliding-window passes with dropout. Moments
    are accumulated in model space; the mean probabilities and the three maps are then sampled back linearly.
    """
    if passes < 1:
        raise InputError(f"passes must be >= 1; got {passes}")
    prepared = preprocess_image(volume, predictor.plan)
    image = torch.from_numpy(channels_first(prepared))[None]
    moments = ProbabilityMoments()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for sample in _segmentation_samples(predictor, image, method, passes):
            moments.add(sample)

    def back(model_space: FloatArray) -> FloatArray:
        return to_input_grid(prepared, volume, model_space)

    mean = moments.mean[0]
    probabilities = np.stack([back(channel) for channel in mean], axis=-1)
    labels = probabilities.argmax(axis=-1).astype(np.uint8 if predictor.plan.num_classes <= 256 else np.int16)
    maps = {
        "entropy": back(moments.predictive_entropy[0]),
        "mutual_information": back(moments.mutual_information[0]),
        "variance": back(moments.variance[0]),
    }
    foreground = labels > 0
    return SegmentationUncertainty(
        method=method,
        samples=moments.count,
        probabilities=volume.with_array(probabilities),
        labels=volume.with_array(labels),
        entropy=volume.with_array(maps["entropy"]),
        mutual_information=volume.with_array(maps["mutual_information"]),
        variance=volume.with_array(maps["variance"]),
        foreground_entropy=_foreground_mean(maps["entropy"], foreground),
        foreground_mutual_information=_foreground_mean(maps["mutual_information"], foreground),
        foreground_variance=_foreground_mean(maps["variance"], foreground),
    )
