"""Reading and writing plan files, the same way for every engine's plan.

A plan is indented JSON a user reads and edits, so lists of numbers stay on one line; a bad edit is reported
by file and field, with the value found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from vesalius.core.errors import PlanFileError

Plan = TypeVar("Plan", bound=BaseModel)
_NUMBER_LIST = re.compile(r"\[\s*(-?[0-9.eE+-]+(?:,\s*-?[0-9.eE+-]+)*)\s*\]")

__all__ = ["load_plan", "override_plan", "save_plan"]


def save_plan(plan: BaseModel, path: Path | str) -> Path:
    file = Path(path)
    text = plan.model_dump_json(indent=2)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(n.strip() for n in m.group(1).split(",")) + "]", text)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text + "\n", encoding="utf-8")
    return file


def _problems(error: ValidationError) -> str:
    problems = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"])
        found = repr(item["input"])[:60] if where else ""
        problems.append(f"{where}: {item['msg']} (found {found})" if where else item["msg"])
    return "; ".join(problems)


def override_plan(plan: Plan, assignments: Sequence[str]) -> Plan:
    """The plan with ``field.sub=value`` edits applied (values read as JSON, else as text), validated again.

    The command-line twin of editing the file: ``--set label_smoothing=0.1 --set network.width=0.5``."""
    data: dict[str, Any] = plan.model_dump(mode="json")
    for assignment in assignments:
        name, equals, raw = assignment.partition("=")
        if not equals or not name.strip():
            raise PlanFileError(f"plan setting {assignment!r}: expected field=value, e.g. network.width=0.5")
        *parents, leaf = name.strip().split(".")
        node = data
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise PlanFileError(f"plan setting {assignment!r}: the plan has no section {part!r}")
            node = node[part]
        if leaf not in node:
            raise PlanFileError(f"plan setting {assignment!r}: the plan has no field {name.strip()!r}")
        try:
            node[leaf] = json.loads(raw)
        except json.JSONDecodeError:
            node[leaf] = raw
    try:
        return type(plan).model_validate(data)
    except ValidationError as error:
        raise PlanFileError(f"plan settings {list(assignments)}: {_problems(error)}") from error


def load_plan(kind: type[Plan], path: Path | str) -> Plan:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise PlanFileError(f"{file}: cannot read the plan ({error})") from error
    try:
        return kind.model_validate_json(text)
    except ValidationError as error:
        raise PlanFileError(f"{file}: invalid plan: {_problems(error)}") from error
