"""How the shipped lung-nodule model is made from one annotated chest CT: the plan and its three stages.

1. Training CTs: the background CT with nodules inserted on the training side (``synthetic``).
2. The candidate detector trained on patches of them (``training``), checkpointed and resumable.
3. The false-positive reducer: a 3-D patch classifier trained on the detector's own candidates on fresh
   training-side CTs (``false_positives``), so it learns exactly the mistakes the detector makes.

Every stage is seeded from the plan, so the same plan and CT give the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.detection.false_positives import FalsePositiveSettings
from vesalius.engines.detection.insertion import InsertedNodule, InsertionSettings
from vesalius.engines.detection.network import DetectorSpec
from vesalius.engines.detection.preprocess import DetectionGeometry, PreparedCT, prepare_ct
from vesalius.engines.detection.reference import ReferenceStandard, reference_standard
from vesalius.engines.detection.synthetic import Side, side_mask, with_nodules
from vesalius.engines.detection.training import DetectionCase, DetectorTrainingSettings

Triple = tuple[int, int, int]

__all__ = ["Background", "LungNodulePlan", "SyntheticDataSettings", "load_background", "synthetic_scans"]


class SyntheticDataSettings(BaseModel):
    """Which CTs are made from the background: how many, how many nodules, where and from which seeds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    training_side: Side = "right"
    margin_mm: float = Field(default=32.0, ge=0.0)
    """Training patches are centred this far from the midline: half the training patch, so none crosses it."""
    training_scans: int = Field(default=6, ge=1)
    false_positive_scans: int = Field(default=8, ge=1)
    held_out_scans: int = Field(default=8, ge=1)
    nodules_per_scan: int = Field(default=12, ge=1)
    held_out_nodules_per_scan: int = Field(default=6, ge=1)
    diameter_median_mm: float = Field(default=8.0, gt=0.0)
    """Above a screening population's 6 mm, so large nodules (the real one is 24 mm) get examples too."""
    diameter_log_sigma: float = Field(default=0.7, gt=0.0)
    seed: int = 0

    @property
    def held_out_side(self) -> Side:
        return "left" if self.training_side == "right" else "right"

    def insertion(self) -> InsertionSettings:
        return InsertionSettings(diameter_median_mm=self.diameter_median_mm, diameter_log_sigma=self.diameter_log_sigma)

    def seeds(self, purpose: str) -> list[int]:
        """Disjoint seeds per purpose: training, false_positive or held_out."""
        offset, count = {
            "training": (0, self.training_scans),
            "false_positive": (100, self.false_positive_scans),
            "held_out": (500, self.held_out_scans),
        }[purpose]
        return [self.seed * 1000 + offset + n for n in range(count)]


class LungNodulePlan(BaseModel):
    """Everything that makes the lung-nodule model; stored in its package."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    detector: DetectorSpec = DetectorSpec(widths=(16, 32, 64, 128), fpn_channels=32)
    """Half the default widths: trains in about half an hour on a 2-core CPU."""
    detector_training: DetectorTrainingSettings = DetectorTrainingSettings(
        patch_size=(64, 64, 64), batch_size=4, steps=3000, warmup_steps=100
    )
    false_positive: FalsePositiveSettings = FalsePositiveSettings()
    data: SyntheticDataSettings = SyntheticDataSettings()
    window: Triple = (128, 128, 128)
    """Sliding-window size at inference; the heads' maps are stitched, so large windows cost no accuracy."""
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    max_candidates: int = Field(default=50, ge=1)
    """Detector candidates per CT re-scored by the false-positive reducer."""

    def geometry(self) -> DetectionGeometry:
        return DetectionGeometry(spacing_mm=self.spacing_mm)


@dataclass(frozen=True)
class Background:
    """The annotated CT the synthetic scans are made from, prepared, with its reference standard."""

    prepared: PreparedCT
    reference: ReferenceStandard

    @property
    def avoid(self) -> list[tuple[tuple[float, float, float], float]]:
        """Real nodules and findings to keep inserted nodules clear of (point marks as 3 mm)."""
        nodules = [(n.centre, n.diameter_mm) for n in self.reference.nodules]
        return nodules + [(f.centre, f.diameter_mm or 3.0) for f in self.reference.irrelevant]


def load_background(series: Path, xml: Path, plan: LungNodulePlan) -> Background:
    """Read an LIDC series and its XML read, build its reference standard and prepare the CT."""
    from vesalius.io.annotations.lidc import SeriesGeometry, read_lidc_xml
    from vesalius.io.read import read_volume

    read = read_lidc_xml(xml)
    volume: Volume = read_volume(series, series_uid=read.series_instance_uid)
    standard = reference_standard(read, SeriesGeometry.from_volume(volume))
    return Background(prepare_ct(volume, plan.geometry()), standard)


def synthetic_scans(
    background: Background, plan: LungNodulePlan, purpose: str
) -> list[tuple[PreparedCT, list[InsertedNodule]]]:
    """The background with nodules inserted: on the training side (training, false_positive) or the held-out
    side (held_out, where the real nodules also lie)."""
    data = plan.data
    if purpose == "held_out":
        region, count = side_mask(background.prepared, data.held_out_side), data.held_out_nodules_per_scan
    elif purpose in ("training", "false_positive"):
        region, count = side_mask(background.prepared, data.training_side, data.margin_mm), data.nodules_per_scan
    else:
        raise InputError(f"synthetic scans are for training, false_positive or held_out; got {purpose!r}")
    return [
        with_nodules(background.prepared, region, count, seed, data.insertion(), background.avoid)
        for seed in data.seeds(purpose)
    ]


def training_cases(background: Background, plan: LungNodulePlan) -> list[DetectionCase]:
    return [DetectionCase.from_nodules(ct, nodules) for ct, nodules in synthetic_scans(background, plan, "training")]
