"""Plan edits from the command line: the same validation as an edited file, with the setting named."""

from __future__ import annotations

import pytest

from vesalius.core.errors import PlanFileError
from vesalius.engines.classification.plan import ClassificationPlan, make_classification_plan
from vesalius.engines.common.plan_file import override_plan


def plan() -> ClassificationPlan:
    counts = {"class_names": ["0", "1"], "class_counts": [147, 399]}
    return make_classification_plan(dataset_name="b", kind="binary", median_size=[28, 28], channels=1, **counts)  # type: ignore[arg-type]


def test_settings_reach_nested_fields_and_read_values_as_json() -> None:
    edited = override_plan(plan(), ["label_smoothing=0.1", "network.width=0.5", "augmentation.flip_axes=[1]"])
    assert (edited.label_smoothing, edited.network.width, edited.augmentation.flip_axes) == (0.1, 0.5, [1])
    assert override_plan(plan(), ["loss=focal"]).loss == "focal"  # not JSON: taken as text
    assert override_plan(plan(), []) == plan()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("label_smoothing", "expected field=value"),
        ("nosuch=1", "no field 'nosuch'"),
        ("nosuch.width=1", "no section 'nosuch'"),
        ("label_smoothing=0.9", "label_smoothing"),  # out of range: validated like an edited file
        ("loss=hinge", "loss"),
    ],
)
def test_a_bad_setting_is_refused_and_named(setting: str, message: str) -> None:
    with pytest.raises(PlanFileError, match=message):
        override_plan(plan(), [setting])
