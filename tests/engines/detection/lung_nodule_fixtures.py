"""A small chest phantom, prepared on a 4 mm grid, and a lung-nodule plan tiny enough to train in seconds."""

from __future__ import annotations

from tests.engines.detection.test_lung_mask import PLEURAL_NODULE, SERIES_UID, chest_phantom
from vesalius.engines.detection.false_positives import FalsePositiveSettings
from vesalius.engines.detection.network import DetectorSpec
from vesalius.engines.detection.preprocess import prepare_ct
from vesalius.engines.detection.recipe import Background, LungNodulePlan, SyntheticDataSettings
from vesalius.engines.detection.reference import Nodule, ReferenceStandard
from vesalius.engines.detection.training import DetectorTrainingSettings

TINY_PLAN = LungNodulePlan(
    spacing_mm=(4.0, 4.0, 4.0),
    detector=DetectorSpec(
        layers=(1, 1, 1, 1), widths=(4, 8, 16, 32), fpn_channels=8, anchor_shapes=((2, 2, 2),), score_threshold=0.0
    ),
    detector_training=DetectorTrainingSettings(patch_size=(32, 32, 32), batch_size=2, steps=3, checkpoint_every=2),
    false_positive=FalsePositiveSettings(
        patch_size=16, spacing_mm=4.0, epochs=1, batch_size=8, positive_copies=2, random_negatives=4
    ),
    data=SyntheticDataSettings(
        margin_mm=20.0,
        training_scans=1,
        false_positive_scans=3,
        held_out_scans=2,
        nodules_per_scan=3,
        held_out_nodules_per_scan=2,
        diameter_median_mm=14.0,
        diameter_log_sigma=0.2,
    ),
    window=(64, 64, 64),
    max_candidates=10,
)
"""Every stage of the real plan, at 4 mm and with a few steps: a specification of the wiring, not of accuracy."""

REAL_NODULE = Nodule(
    seriesuid=SERIES_UID,
    centre=PLEURAL_NODULE[0],
    diameter_mm=2 * PLEURAL_NODULE[1],
    volume_mm3=4.0 / 3.0 * 3.14159 * PLEURAL_NODULE[1] ** 3,
    malignancy=3.0,
    readers=4,
    marks=(),
)
"""The phantom's pleural nodule in the left lung, as a reader consensus would give it."""


def phantom_background(plan: LungNodulePlan = TINY_PLAN) -> Background:
    volume = chest_phantom(seed=5).volume
    return Background(prepare_ct(volume, plan.geometry()), ReferenceStandard(SERIES_UID, (REAL_NODULE,), ()))
