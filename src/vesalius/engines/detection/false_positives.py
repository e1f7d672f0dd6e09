"""False-positive reduction: the classification engine's 3-D patch classifier re-scores detector candidates.

The reducer sees a larger, finer view of each candidate than the detector's coarse anchors (32 voxels at
1.5 mm around the candidate's centre) and is trained on the detector's own candidates (vessels, fissures,
pleura it mistook for nodules) against patches on the true nodules, so it learns the mistakes the detector
actually makes. Training, selection of the best epoch (AUC on held-back scans), flips at test time and the
network all come from ``vesalius.engines.classification``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field

from vesalius.core.errors import InputError
from vesalius.engines.classification.networks import ClassificationNetwork, MultiHeadClassifier
from vesalius.engines.classification.plan import ClassificationPlan, make_classification_plan
from vesalius.engines.classification.trainer import (
    ImageSet,
    TrainingResult,
    main_probabilities,
    predict_logits,
    train_classifier,
    tta_flip_axes,
)
from vesalius.engines.common.precision import pick_device
from vesalius.engines.detection.boxes import Detection, NoduleLike
from vesalius.engines.detection.preprocess import PreparedCT, extract_patches

__all__ = [
    "CandidateScan",
    "FalsePositiveReducer",
    "FalsePositiveSettings",
    "candidate_labels",
    "candidate_set",
    "train_reducer",
]

CLASS_NAMES = ("false-positive", "nodule")


class FalsePositiveSettings(BaseModel):
    """The re-scoring classifier: its patch, network and training schedule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patch_size: int = Field(default=32, ge=16)
    spacing_mm: float = Field(default=1.5, gt=0.0)
    """32 voxels at 1.5 mm: 48 mm of context, a 30 mm nodule and its surroundings."""
    architecture: str = "resnet10"
    width: float = Field(default=0.5, gt=0.0, le=2.0)
    epochs: int = Field(default=12, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0.0)
    positive_copies: int = Field(default=8, ge=0)
    """Jittered patches per inserted nodule, beside the detector's own hits on it."""
    jitter_mm: float = Field(default=3.0, ge=0.0)
    random_negatives: int = Field(default=16, ge=0)
    """Lung points per scan away from every nodule, beside the detector's false positives: plain parenchyma
    and vessels the detector happened to get right still need a 'no'."""
    selection_scans: int = Field(default=2, ge=1)
    """The last scans of the training set, held back to pick the best epoch."""
    seed: int = 0


@dataclass(frozen=True)
class CandidateScan:
    """One CT, its true nodules, the findings whose candidates count neither way, and the detector's output."""

    prepared: PreparedCT
    nodules: Sequence[NoduleLike]
    detections: Sequence[Detection]
    ignore: Sequence[tuple[Sequence[float], float]] = ()


def _hits(points: npt.NDArray[np.float64], lesions: Sequence[tuple[Sequence[float], float]]) -> npt.NDArray[np.bool_]:
    """(N,) whether each point lies within the radius of some lesion (LUNA16's hit rule)."""
    hit = np.zeros(len(points), dtype=bool)
    for centre, diameter in lesions:
        hit |= np.linalg.norm(points - np.asarray(centre, dtype=np.float64)[None, :], axis=1) <= diameter / 2.0
    return hit


def candidate_labels(scan: CandidateScan) -> npt.NDArray[np.int64]:
    """1 for a candidate on a nodule, 0 for a false positive, -1 for one on an ignored finding only."""
    points = np.array([d.centre for d in scan.detections], dtype=np.float64).reshape(-1, 3)
    on_nodule = _hits(points, [(n.centre, n.diameter_mm) for n in scan.nodules])
    ignored = _hits(points, scan.ignore) & ~on_nodule
    return np.where(on_nodule, 1, np.where(ignored, -1, 0)).astype(np.int64)


def patches(prepared: PreparedCT, centres: npt.ArrayLike, settings: FalsePositiveSettings) -> npt.NDArray[np.float32]:
    """(N, 1, s, s, s) views of the network image around LPS points; outside the crop is air."""
    points = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    fill = float(np.min(prepared.image.array))
    stacked = extract_patches(prepared.image, points, settings.patch_size, settings.spacing_mm, fill=fill)
    return stacked[:, None]


def _lung_points(scan: CandidateScan, count: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Up to ``count`` random lung voxels (LPS mm) outside every nodule and ignored finding, with a margin."""
    lung = np.flatnonzero(scan.prepared.lung_mask.array)
    if not count or not len(lung):
        return np.zeros((0, 3), dtype=np.float64)
    drawn = rng.choice(lung, size=min(len(lung), 4 * count), replace=False)
    points = scan.prepared.index_to_world(np.stack(np.unravel_index(drawn, scan.prepared.lung_mask.shape), axis=1))
    grown = [(n.centre, n.diameter_mm + 10.0) for n in scan.nodules] + [(c, d + 10.0) for c, d in scan.ignore]
    return np.asarray(points[~_hits(points, grown)][:count], dtype=np.float64)


def candidate_set(scans: Sequence[CandidateScan], settings: FalsePositiveSettings, name: str) -> ImageSet:
    """The detector's labelled candidates on ``scans``, jittered patches on every nodule, random lung points."""
    rng = np.random.default_rng(settings.seed)
    images, labels, ids = [], [], []
    for number, scan in enumerate(scans):
        known = candidate_labels(scan)
        keep = known >= 0
        centres = np.array([d.centre for d in scan.detections], dtype=np.float64).reshape(-1, 3)[keep]
        copies = [
            np.asarray(n.centre, dtype=np.float64)
            + rng.uniform(-1.0, 1.0, 3) * min(settings.jitter_mm, n.diameter_mm / 4)
            for n in scan.nodules
            for _ in range(settings.positive_copies)
        ]
        negatives = _lung_points(scan, settings.random_negatives, rng)
        points = np.concatenate([centres, np.array(copies, dtype=np.float64).reshape(-1, 3), negatives])
        images.append(patches(scan.prepared, points, settings))
        labels.append(
            np.concatenate([known[keep], np.ones(len(copies), dtype=np.int64), np.zeros(len(negatives), np.int64)])
        )
        ids += [f"{name}-{number}-{k}" for k in range(len(points))]
    if not ids:
        raise InputError("false-positive reduction needs at least one candidate or nodule to learn from")
    return ImageSet(ids=ids, images=np.concatenate(images), labels=np.concatenate(labels))


def classification_plan(settings: FalsePositiveSettings, class_counts: Sequence[int]) -> ClassificationPlan:
    """The classification engine's plan for candidate patches: binary, 3-D, flips on every axis and at test."""
    size = [settings.patch_size] * 3
    plan = make_classification_plan(
        dataset_name="lung-nodule-candidates",
        kind="binary",
        class_names=CLASS_NAMES,
        class_counts=class_counts,
        median_size=size,
        channels=1,
        architecture=settings.architecture,
        input_size=size,
        width=settings.width,
        batch_size=settings.batch_size,
        flip_axes=(0, 1, 2),
    )
    # patches keep the detector's HU window in [0, 1]: no per-image z-scoring, no brightness changes that would
    # turn a vessel's density into a nodule's
    augmentation = plan.augmentation.model_copy(update={"brightness": 0.02, "contrast": 0.05})
    return plan.model_copy(
        update={
            "normalization": "unit",
            "epochs": settings.epochs,
            "learning_rate": settings.learning_rate,
            "augmentation": augmentation,
            "seed": settings.seed,
        }
    )


@dataclass(frozen=True)
class FalsePositiveReducer:
    """A trained re-scoring classifier with its settings and classification plan."""

    settings: FalsePositiveSettings
    plan: ClassificationPlan
    network: MultiHeadClassifier

    @classmethod
    def from_state(
        cls, settings: FalsePositiveSettings, plan: ClassificationPlan, state_dict: dict[str, torch.Tensor]
    ) -> FalsePositiveReducer:
        network = ClassificationNetwork.build(plan.network)
        network.load_state_dict({k: v.float() for k, v in state_dict.items()})
        return cls(settings, plan, network.eval())

    def probabilities(
        self, prepared: PreparedCT, centres: npt.ArrayLike, device: str | torch.device = "cpu"
    ) -> npt.NDArray[np.float64]:
        """P(nodule) of each LPS point's patch, averaged over the plan's flips."""
        points = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
        if not len(points):
            return np.zeros(0, dtype=np.float64)
        target = device if isinstance(device, torch.device) else pick_device(device)
        self.network.to(target)
        logits = predict_logits(
            self.network, patches(prepared, points, self.settings), target, None, flip_axes=tta_flip_axes(self.plan)
        )
        return main_probabilities(self.plan, logits["main"])[:, 1]


def train_reducer(
    scans: Sequence[CandidateScan], settings: FalsePositiveSettings, run_dir: Path | str, *, device: str = "auto"
) -> tuple[FalsePositiveReducer, TrainingResult]:
    """Train on all but the last ``selection_scans`` scans, pick the epoch by AUC on those."""
    if len(scans) <= settings.selection_scans:
        raise InputError(
            f"false-positive reduction needs more than {settings.selection_scans} scans (the selection ones); "
            f"got {len(scans)}"
        )
    train = candidate_set(scans[: -settings.selection_scans], settings, "train")
    selection = candidate_set(scans[-settings.selection_scans :], settings, "selection")
    counts = [int(np.count_nonzero(train.labels == k)) for k in range(len(CLASS_NAMES))]
    if min(counts) == 0 or len(np.unique(selection.labels)) < 2:
        raise InputError(
            f"false-positive reduction needs nodules and false positives in training and selection scans; "
            f"training has {counts[1]} nodule and {counts[0]} false-positive patches"
        )
    plan = classification_plan(settings, counts)
    result = train_classifier(plan, train, selection, run_dir, device=device, precision="fp32")
    return FalsePositiveReducer.from_state(settings, plan, result.state_dict), result
