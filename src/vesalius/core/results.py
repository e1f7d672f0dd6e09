"""What an engine hands to the writers: results that keep their geometry and the model that made them.

Writers (DICOM SEG and SR, FHIR) and services read only these types, never an engine's internals, so a new task
engine reaches PACS and FHIR by returning one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume

__all__ = [
    "ClassificationResult",
    "ModelIdentity",
    "NoduleFinding",
    "NoduleResult",
    "Result",
    "SegmentationResult",
]


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a result: name, version and the SHA-256 of its package manifest (audit, SR, FHIR)."""

    name: str
    version: str
    sha256: str
    task: str


@dataclass(frozen=True)
class SegmentationResult:
    """A label map on the source image's grid (same affine and shape), and each label's name."""

    labels: Volume
    """Integer labels, 0 background, on exactly the grid of the series it was computed from."""
    label_names: dict[int, str]
    model: ModelIdentity

    def __post_init__(self) -> None:
        if 0 in self.label_names:
            raise InputError("segmentation label_names name the foreground labels only (0 is background)")

    def volumes_ml(self) -> dict[str, float]:
        """Volume of each named label in millilitres."""
        voxel_ml = float(abs(self.labels.spacing.prod())) / 1000.0
        return {name: float((self.labels.array == index).sum()) * voxel_ml for index, name in self.label_names.items()}


@dataclass(frozen=True)
class NoduleFinding:
    """One nodule candidate in patient space (LPS mm)."""

    centre: tuple[float, float, float]
    diameter_mm: float
    probability: float
    nodule: bool
    """At or above the model's operating point."""
    malignancy: float | None = None


@dataclass(frozen=True)
class NoduleResult:
    """The nodules found on one CT series, most probable first."""

    series_instance_uid: str
    findings: tuple[NoduleFinding, ...]
    model: ModelIdentity

    @property
    def nodules(self) -> tuple[NoduleFinding, ...]:
        """The findings at or above the operating point: what a report lists."""
        return tuple(f for f in self.findings if f.nodule)


@dataclass(frozen=True)
class ClassificationResult:
    """Class probabilities for one image or series, the predicted class, and a grade for ordinal tasks."""

    series_instance_uid: str
    probabilities: dict[str, float]
    predicted: str
    model: ModelIdentity
    grade: int | None = None
    extra: dict[str, dict[str, float]] = field(default_factory=dict)
    """Multi-task heads: target -> class -> probability."""

    def __post_init__(self) -> None:
        if self.predicted not in self.probabilities:
            raise InputError(f"predicted class {self.predicted!r} is not one of {sorted(self.probabilities)}")


Result = SegmentationResult | NoduleResult | ClassificationResult
