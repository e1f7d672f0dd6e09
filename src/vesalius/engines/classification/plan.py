"""The classification plan: a typed, editable JSON file derived from what the dataset holds.

Rules (each a default the user may edit in the file):

- Input size: 2-D images keep their median size when it is at most 64 px (MedMNIST), else 224 px (the
  size the ImageNet-era backbones and the published pneumonia results use); 3-D volumes keep their size.
  Sizes are rounded up to a multiple of 16 so every backbone's downsampling divides them.
- Network: ResNet-18 in 2-D (width 1), ResNet-18 at half width in 3-D (a full-width 3-D ResNet-18 has 33 M
  parameters, over what a shipped package may hold); 2.5-D stacks ``slices`` neighbouring slices as channels.
- Imbalance: when the rarest class has under half the examples of the commonest, batches are drawn with
  inverse-frequency weights (each class equally likely), which keeps the loss a plain cross-entropy;
  ``loss: focal`` is the alternative.
- Schedule: AdamW with cosine decay after a one-epoch warm-up; epochs so that about 30,000 images are seen
  (between 20 and 100 epochs); batch 32 in 2-D and 16 in 3-D.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from vesalius.core.errors import PlanFileError
from vesalius.engines.classification.spec import NetworkSpec, head_sizes
from vesalius.engines.common.plan_file import load_plan, save_plan

PLAN_VERSION = 1
TaskKind = Literal["binary", "multiclass", "ordinal", "multilabel"]

__all__ = ["ClassificationPlan", "make_classification_plan", "predicted_label"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClassificationAugmentation(_Model):
    """Applied to whole batches on the training device; probabilities per image."""

    flip_axes: list[int] = Field(default=[], description="Spatial axes mirrored at random (none for chest X-rays)")
    rotation_degrees: float = Field(default=10.0, ge=0, le=180, description="Largest in-plane rotation")
    scale_range: tuple[float, float] = Field(default=(0.9, 1.1), description="Zoom factor range")
    translation: float = Field(default=0.05, ge=0, le=0.5, description="Largest shift, a fraction of the size")
    spatial_probability: float = Field(default=0.8, ge=0, le=1, description="Share of images moved at all")
    brightness: float = Field(default=0.1, ge=0, le=1, description="Largest additive intensity change (z units)")
    contrast: float = Field(default=0.1, ge=0, le=1, description="Largest relative contrast change")
    noise_std: float = Field(default=0.0, ge=0, description="Gaussian noise (z units)")


class ClassificationPlan(_Model):
    plan_version: int = PLAN_VERSION
    task: Literal["classification"] = "classification"
    kind: TaskKind = Field(description="binary, multiclass, ordinal (grades) or multilabel")
    dataset_name: str
    patient_pattern: str | None = Field(
        default=None, description="Regular expression whose group 'patient' names the patient in a file name"
    )
    class_names: list[str] = Field(description="Class (or grade, or label) names in index order")
    extra_targets: dict[str, list[str]] = Field(default={}, description="Multi-task heads: name -> class names")
    spatial_dims: Literal[2, 3]
    slices: int = Field(default=1, ge=1, description="2.5-D: neighbouring slices stacked as channels (odd)")
    channels: int = Field(ge=1, description="Image channels (RGB 3, grey 1) before 2.5-D stacking")
    input_size: list[int] = Field(description="(H, W) or (D, H, W) the network sees")
    normalization: Literal["zscore", "unit"] = Field(
        default="zscore", description="Per image: zero mean, unit sd; or divide by the type's maximum"
    )
    network: NetworkSpec
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: float = Field(default=2.0, ge=0)
    balanced_sampling: bool = Field(description="Draw batches with inverse class-frequency weights")
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    weight_averaging: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Exponential moving average of the weights per step (e.g. 0.99); the average is what is "
        "validated and shipped. 0: off",
    )
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    augmentation: ClassificationAugmentation = Field(default_factory=ClassificationAugmentation)
    tta_flips: bool = Field(default=False, description="Average predictions over the flip axes at test time")
    folds: int = Field(default=5, ge=2)
    seed: int = 0

    def save(self, path: Path | str) -> Path:
        return save_plan(self, path)

    @classmethod
    def load(cls, path: Path | str) -> ClassificationPlan:
        return load_plan(cls, path)


def _round_up(size: float, multiple: int = 16) -> int:
    return max(multiple, math.ceil(size / multiple) * multiple)


def make_classification_plan(
    *,
    dataset_name: str,
    kind: TaskKind,
    class_names: Sequence[str],
    class_counts: Sequence[int],
    median_size: Sequence[float],
    channels: int,
    extra_targets: Mapping[str, Sequence[str]] | None = None,
    slices: int = 1,
    architecture: str | None = None,
    input_size: Sequence[int] | None = None,
    width: float | None = None,
    batch_size: int | None = None,
    flip_axes: Sequence[int] | None = None,
) -> ClassificationPlan:
    """Derive a plan from a dataset's summary (see module notes for the rules).

    ``input_size``, ``width`` and ``batch_size`` override the rules, e.g. a smaller input and a half-width
    network so that a CPU trains in minutes what the default trains in hours. ``flip_axes`` names the axes
    that may be mirrored (left-right in breast ultrasound, not in a chest X-ray); predictions then average
    over those flips too."""
    dims = len(median_size)
    if dims not in (2, 3):
        raise PlanFileError(f"images must be 2-D or 3-D; the median size is {list(median_size)}")
    if slices > 1 and (dims != 3 or slices % 2 == 0):
        raise PlanFileError(f"2.5-D needs volumes and an odd number of slices; got {slices} for {dims}-D")
    extra = {name: list(names) for name, names in (extra_targets or {}).items()}
    if dims == 2:
        side = max(median_size)
        size = [_round_up(s) for s in median_size] if side <= 64 else [224, 224]
    else:
        size = [_round_up(s) for s in median_size]
    network_dims: Literal[2, 3] = 2 if dims == 2 or slices > 1 else 3
    if slices > 1:
        size = size[1:]
    if input_size is not None:
        if len(input_size) == 1:
            input_size = list(input_size) * len(size)
        if len(input_size) != len(size) or min(input_size) < 16:
            raise PlanFileError(f"input size {list(input_size)} must give {len(size)} sides of at least 16 px")
        size = [_round_up(s) for s in input_size]
    flips = list(flip_axes) if flip_axes is not None else [0, 1, 2] if network_dims == 3 else []
    if any(not 0 <= axis < len(size) for axis in flips):
        raise PlanFileError(f"flip axes {flips} must be spatial axes of a {len(size)}-D input (0 to {len(size) - 1})")
    counts = [c for c in class_counts if c > 0]
    images = sum(class_counts)
    epochs = int(min(100, max(20, round(30_000 / max(images, 1)))))
    spec = NetworkSpec(
        architecture=architecture or "resnet18",  # type: ignore[arg-type]
        spatial_dims=network_dims,
        in_channels=channels * slices,
        input_size=size,
        heads=head_sizes(kind, class_names, extra),
        width=width if width is not None else 1.0 if network_dims == 2 else 0.5,
    )
    return ClassificationPlan(
        kind=kind,
        dataset_name=dataset_name,
        class_names=list(class_names),
        extra_targets=extra,
        spatial_dims=network_dims,
        slices=slices,
        channels=channels,
        input_size=size,
        network=spec,
        balanced_sampling=bool(counts) and min(counts) < 0.5 * max(counts) and kind != "multilabel",
        epochs=epochs,
        batch_size=batch_size or (32 if network_dims == 2 else 16),
        augmentation=ClassificationAugmentation(flip_axes=flips),
        tta_flips=bool(flip_axes),
    )


def predicted_label(plan: ClassificationPlan, row: npt.ArrayLike, threshold: float | None) -> str:
    """The predicted class of one row of probabilities: the operating point for binary tasks, every label at
    0.5 or above for multi-label ones (joined by ';'), else the most probable class."""
    names, values = plan.class_names, np.asarray(row, dtype=np.float64)
    if plan.kind == "binary" and threshold is not None:
        return names[int(values[1] >= threshold)]
    if plan.kind == "multilabel":
        return ";".join(n for n, p in zip(names, values, strict=True) if p >= 0.5)
    return names[int(np.argmax(values))]
