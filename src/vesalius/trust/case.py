"""One case through the trust stack: the prediction, an explanation and its sanity check, uncertainty and the
review flag, gathered on the input's own grid so that every output (maps, overlays, DICOM, report) agrees.

A classifier's maps live on the resized network input; they are resized back to the image's pixels. A
segmentation class is explained within one patch around its region in model space (memory follows the patch)
and sampled back to the input grid with the same inversion as the label map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.classification.dataset import ImageSource
from vesalius.engines.classification.engine import Classifier
from vesalius.engines.classification.images import load_image, prepare_image, resize
from vesalius.engines.common.package import PackageManifest
from vesalius.engines.segmentation.postprocess import channels_first, to_input_grid
from vesalius.engines.segmentation.predict import Predictor
from vesalius.trust.abstain import AbstainPolicy
from vesalius.trust.explain import METHODS, RegionTarget, explain, explain_region, region_patch
from vesalius.trust.sanity import SanityReport, parameter_randomisation_check
from vesalius.trust.uncertainty import classification_uncertainty, segmentation_uncertainty

ExplainMethod = Literal["gradcam", "gradcam++", "occlusion", "integrated_gradients"]
UncertaintyMethod = Literal["tta", "mc_dropout", "ensemble", "softmax"]

__all__ = ["CaseTrust", "TrustSettings", "trust_classification", "trust_segmentation"]


class TrustSettings(BaseModel):
    """What to compute for each case; the CLI's --explain/--uncertainty options fill it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    explain: ExplainMethod | None = "gradcam"
    layer: str | None = Field(default=None, description="Grad-CAM layer; None: the last convolutional stage")
    sanity_check: bool = Field(default=True, description="Randomise the weights and compare maps (Adebayo 2018)")
    uncertainty: UncertaintyMethod | None = "tta"
    passes: int = Field(default=10, ge=1, description="MC-dropout passes")
    score: str = Field(default="predictive_entropy", description="Per-case score the abstain policy reads")
    policy: AbstainPolicy | None = None


@dataclass
class CaseTrust:
    """Everything the writers need for one case, on the input's grid (``image``: grey, (i, j, k))."""

    name: str
    task: str
    image: Volume
    prediction: str
    probability: float | None = None
    findings: list[tuple[str, float | str, str]] = field(default_factory=list)  # (label, value, unit)
    heatmap: Volume | None = None
    explanation_method: str | None = None
    labels: Volume | None = None
    uncertainty_maps: dict[str, Volume] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    uncertainty_method: str | None = None
    flagged: bool = False
    flag_reason: str = ""
    sanity: SanityReport | None = None


def _flag(case: CaseTrust, settings: TrustSettings) -> None:
    policy = settings.policy
    if policy is None:
        case.flag_reason = "No review policy was given (--policy), so no case is flagged."
        return
    if policy.method is not None and policy.method != settings.uncertainty:
        raise InputError(
            f"abstain policy was fitted on {policy.method} uncertainty; run with --uncertainty {policy.method} "
            f"(this run: {settings.uncertainty or 'none'})"
        )
    if policy.score not in case.scores:
        raise InputError(
            f"abstain policy reads the score {policy.score!r}, which {settings.uncertainty or 'no uncertainty'} "
            f"method does not give; scores here: {', '.join(sorted(case.scores)) or 'none'}"
        )
    value = case.scores[policy.score]
    case.flagged = bool(policy.flag(np.asarray([value]))[0])
    case.flag_reason = f"Not flagged: {policy.score} {value:.3f} is within the review threshold {policy.threshold:.3f}."
    if case.flagged:
        case.flag_reason = (
            f"{policy.score} {value:.3f} is above the review threshold {policy.threshold:.3f}, set to keep "
            f"{policy.target_accuracy:.0%} accuracy on {policy.validation_n} validation cases"
        )


def _as_volume(channel_first: npt.NDArray[np.float32]) -> Volume:
    """(C, H, W) or (C, D, H, W) pixels as a grey (i, j, k) volume: columns, rows, slices, 1 mm."""
    grey = channel_first.mean(axis=0)
    array = grey.T[:, :, None] if grey.ndim == 2 else np.transpose(grey, (2, 1, 0))
    return Volume.from_geometry(np.ascontiguousarray(array, dtype=np.float32), spacing=(1.0, 1.0, 1.0))


def tta_axes(classifier: Classifier) -> tuple[int, ...]:
    """The flips TTA samples: the plan's, or a left-right flip for a plan trained without flips (a chest
    film's mirror image is not anatomy, but it is the smallest change a robust model should shrug off)."""
    return tuple(classifier.plan.augmentation.flip_axes) or (len(classifier.plan.input_size) - 1,)


def trust_classification(
    classifier: Classifier,
    source: ImageSource,
    settings: TrustSettings,
    members: Sequence[Classifier] | None = None,
) -> CaseTrust:
    """Predict, explain the predicted class, and score the uncertainty of one image."""
    pixels = load_image(source)
    prepared = prepare_image(pixels, classifier.plan)[None].astype(np.float32)
    method = settings.uncertainty or "softmax"
    uncertainty = classification_uncertainty(
        classifier,
        prepared,
        method,
        passes=settings.passes,
        members=members if method == "ensemble" else None,
        flip_axes=tta_axes(classifier),
    )
    probabilities = uncertainty.probabilities[0]
    label = classifier.label(probabilities)
    index = classifier.plan.class_names.index(label) if label in classifier.plan.class_names else 0
    case = CaseTrust(
        name=str(source),
        task="classification",
        image=_as_volume(pixels),
        prediction=label,
        probability=float(probabilities[index]),
        findings=[
            (f"P({name})", float(p), "") for name, p in zip(classifier.plan.class_names, probabilities, strict=True)
        ],
        uncertainty_method=settings.uncertainty,
    )
    if settings.uncertainty is not None:
        names = ("predictive_entropy", "mutual_information", "variance", "least_confidence")
        case.scores = {name: float(uncertainty.score(name)[0]) for name in names}
    if settings.explain is not None:
        image = torch.from_numpy(prepared)
        heat = explain(classifier.network, image, index, settings.explain, layer=settings.layer)
        case.heatmap = _as_volume(resize(heat[None], pixels.shape[1:]))
        case.explanation_method = settings.explain
        if settings.sanity_check:
            case.sanity = parameter_randomisation_check(
                classifier.network, image, index, settings.explain, layer=settings.layer
            )
    _flag(case, settings)
    return case


def _segmentation_heatmap(
    predictor: Predictor, volume: Volume, space: tuple[Volume, torch.Tensor], settings: TrustSettings
) -> tuple[Volume, Any]:
    """Per predicted class, its region explained in model space; the maximum over classes, on the input grid."""
    assert settings.explain is not None
    prepared, probabilities = space
    labels = probabilities[0].argmax(dim=0).numpy()
    image = torch.from_numpy(channels_first(prepared))[None]
    network = predictor.networks[0]
    heat = np.zeros(labels.shape, dtype=np.float32)
    first: tuple[int, npt.NDArray[Any]] | None = None
    for index in range(1, predictor.plan.num_classes):
        mask = labels == index
        if not mask.any():
            continue
        target = RegionTarget(index, mask)
        first = first or (index, mask)
        region = explain_region(
            network, image, target, settings.explain, predictor.plan.patch_size, layer=settings.layer
        )
        np.maximum(heat, region, out=heat)
    sanity = None
    if settings.sanity_check and first is not None:
        sanity = _region_sanity(network, image, first, predictor.plan.patch_size, settings)
    return volume.with_array(np.clip(to_input_grid(prepared, volume, heat), 0.0, 1.0)), sanity


def _region_sanity(
    network: torch.nn.Module,
    image: torch.Tensor,
    region: tuple[int, npt.NDArray[Any]],
    patch_size: Sequence[int],
    settings: TrustSettings,
) -> SanityReport:
    """The randomisation check on the patch the region was explained in (the same bounded memory)."""
    assert settings.explain is not None
    patch, target, _ = region_patch(image, RegionTarget(*region), patch_size)
    return parameter_randomisation_check(network, patch, target, settings.explain, layer=settings.layer)


def trust_segmentation(predictor: Predictor, volume: Volume, settings: TrustSettings, name: str) -> CaseTrust:
    """Segment, measure each class, explain each predicted region and map the voxel uncertainty."""
    space = predictor.model_space(volume)  # one ensemble pass serves the label map and the explanation
    labels = predictor.predict(volume, space)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    names = predictor.plan.labels
    volumes = {names[c]: float(np.count_nonzero(labels.array == c)) * voxel_ml for c in range(1, len(names))}
    case = CaseTrust(
        name=name,
        task="segmentation",
        image=volume.with_array(np.asarray(volume.array[..., 0] if volume.array.ndim == 4 else volume.array)),
        prediction=", ".join(f"{label} {ml:.2f} mL" for label, ml in volumes.items()),
        findings=[(f"{label} volume", round(ml, 3), "mL") for label, ml in volumes.items()],
        labels=labels,
        uncertainty_method=settings.uncertainty,
    )
    if settings.uncertainty is not None:
        if settings.uncertainty == "softmax":
            raise InputError("segmentation uncertainty: choose tta, mc_dropout or ensemble (softmax is per case)")
        result = segmentation_uncertainty(predictor, volume, settings.uncertainty, passes=settings.passes)
        case.uncertainty_maps = {
            "entropy": result.entropy,
            "mutual_information": result.mutual_information,
            "variance": result.variance,
        }
        case.scores = {
            "predictive_entropy": result.foreground_entropy,
            "mutual_information": result.foreground_mutual_information,
            "variance": result.foreground_variance,
        }
    if settings.explain is not None:
        case.heatmap, case.sanity = _segmentation_heatmap(predictor, volume, space, settings)
        case.explanation_method = settings.explain
    _flag(case, settings)
    return case


def model_summary(manifest: PackageManifest) -> dict[str, Any]:
    """What the report's model card says: identity, intended use, data, validation figures with CIs."""
    metrics = manifest.metrics
    rows: list[tuple[str, float, float | None, float | None]] = []
    evaluation = metrics.get("evaluation") or {}
    for metric, value in (evaluation.get("metrics") or {}).items():
        rows.append((metric.upper(), value["value"], value.get("ci_low"), value.get("ci_high")))
    for fold, classes in ((metrics.get("cross_validation") or {}).get("folds") or {}).items():
        for label, summary in classes.items():
            rows.append((f"Dice {label} (fold {fold})", summary["mean"], summary.get("ci_low"), summary.get("ci_high")))
    calibration = metrics.get("calibration") or {}
    labels = [name for index, name in sorted(manifest.labels.items()) if manifest.task != "segmentation" or index]
    return {
        "name": manifest.name,
        "version": manifest.version,
        "task": manifest.task,
        "intended_use": f"Decision support: {manifest.task} of {', '.join(labels)}. Research use, not a device.",
        "training_data": str(manifest.data_fingerprint.get("dataset_name") or manifest.plan.get("dataset_name", "")),
        "validation_metrics": rows[:12],
        "calibration_ece": calibration.get("ece_after"),
    }


def check_method(method: str | None) -> None:
    if method is not None and method not in METHODS:
        raise InputError(f"explanation method {method!r} is unknown; choose one of {', '.join(METHODS)}")
