"""The smaller network of a student or a pruned model, written as a change to the original's plan.

Everything but the network (input size, normalisation, patch, spacing, labels, augmentation) stays the
teacher's, so the student predicts on the same inputs through the same pipeline.

Student specs are comma-separated: an optional architecture, then ``key=value`` pairs.
- classification: ``resnet10,width=0.25`` (keys ``width``, ``dropout``);
- segmentation: ``filters=8:16:32:64`` or ``width=0.5`` (the teacher's filters scaled).
"""

from __future__ import annotations

from typing import Any

from vesalius.core.errors import InputError
from vesalius.engines.classification.plan import ClassificationPlan
from vesalius.engines.classification.spec import ARCHITECTURES
from vesalius.engines.common.plan import SegmentationPlan

Plan = ClassificationPlan | SegmentationPlan
MIN_FILTERS = 4  # a U-Net stage narrower than this stops learning

__all__ = ["Plan", "narrower_plan", "parse_spec", "student_plan"]


def parse_spec(spec: str) -> tuple[str | None, dict[str, str]]:
    """(architecture or None, key -> value) from ``arch,key=value,...``."""
    architecture, options = None, {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep:
            if architecture is not None:
                raise InputError(f"student spec {spec!r}: two architectures ({architecture}, {part})")
            architecture = part
        else:
            options[key.strip()] = value.strip()
    if architecture is None and not options:
        raise InputError("the student spec is empty; e.g. resnet10,width=0.25 or filters=8:16:32:64")
    return architecture, options


def _number(spec: str, key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InputError(f"student spec {spec!r}: {key} must be a number, got {value!r}") from None


def _with_network(plan: Plan, update: dict[str, Any]) -> Plan:
    """``plan`` with its network's fields in ``update`` replaced, validated as a new plan."""
    changed = plan.model_copy(update={"network": plan.network.model_copy(update=update)})
    return type(plan).model_validate(changed.model_dump())


def _scaled_filters(filters: list[int], factor: float) -> list[int]:
    return [max(MIN_FILTERS, round(f * factor)) for f in filters]


def _classification_student(spec: str) -> dict[str, Any]:
    architecture, options = parse_spec(spec)
    unknown = set(options) - {"width", "dropout"}
    if unknown:
        raise InputError(
            f"student spec {spec!r}: unknown key(s) {sorted(unknown)}; classification takes width, dropout"
        )
    if architecture is not None and architecture not in ARCHITECTURES:
        raise InputError(
            f"student spec {spec!r}: unknown architecture {architecture!r}; one of {', '.join(ARCHITECTURES)}"
        )
    update: dict[str, Any] = {key: _number(spec, key, value) for key, value in options.items()}
    if architecture is not None:
        update["architecture"] = architecture
    return update


def _segmentation_student(plan: SegmentationPlan, spec: str) -> dict[str, Any]:
    architecture, options = parse_spec(spec)
    unknown = set(options) - {"filters", "width"}
    if unknown or architecture not in (None, "DynUNet") or len(options) != 1:
        raise InputError(f"student spec {spec!r}: segmentation takes one of filters=8:16:32:64 or width=0.5")
    stages = len(plan.network.filters)
    if "filters" in options:
        try:
            filters = [int(f) for f in options["filters"].replace("/", ":").split(":")]
        except ValueError:
            raise InputError(f"student spec {spec!r}: filters must be integers separated by ':'") from None
        if len(filters) != stages:
            raise InputError(f"student spec {spec!r}: the plan has {stages} stages, so filters needs {stages} numbers")
    else:
        filters = _scaled_filters(plan.network.filters, _number(spec, "width", options["width"]))
    if min(filters) < 1:
        raise InputError(f"student spec {spec!r}: every stage needs at least one filter")
    return {"filters": filters}


def student_plan(plan: Plan, spec: str) -> Plan:
    """The teacher's plan with the student's network."""
    if isinstance(plan, ClassificationPlan):
        return _with_network(plan, _classification_student(spec))
    return _with_network(plan, _segmentation_student(plan, spec))


def narrower_plan(plan: Plan, ratio: float) -> Plan:
    """The plan whose network keeps ``1 - ratio`` of the channels of every layer."""
    if not 0 < ratio < 1:
        raise InputError(f"the pruning ratio must be between 0 and 1 (the share of channels removed); got {ratio}")
    if isinstance(plan, ClassificationPlan):
        if not plan.network.architecture.startswith("resnet"):
            raise InputError(
                f"structured pruning takes ResNet classifiers (width is their plan's knob); this one is "
                f"{plan.network.architecture}; distil it into a ResNet instead"
            )
        narrower = _with_network(plan, {"width": plan.network.width * (1 - ratio)})
        unchanged = narrower.network.stage_widths() == plan.network.stage_widths()  # type: ignore[union-attr]
    else:
        narrower = _with_network(plan, {"filters": _scaled_filters(plan.network.filters, 1 - ratio)})
        unchanged = narrower.network == plan.network
    if unchanged:
        raise InputError(f"a pruning ratio of {ratio} removes no channel from this network; use a larger one")
    return narrower
