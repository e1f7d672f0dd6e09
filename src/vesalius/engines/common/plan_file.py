"""Reading and writing plan files, the same way for every engine's plan.

A plan is indented JSON a user reads and edits, so lists of numbers stay on one line; a bad edit is reported
by file and field, with the value found.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from vesalius.core.errors import PlanFileError

Plan = TypeVar("Plan", bound=BaseModel)
_NUMBER_LIST = re.compile(r"\[\s*(-?[0-9.eE+-]+(?:,\s*-?[0-9.eE+-]+)*)\s*\]")

__all__ = ["load_plan", "save_plan"]


def save_plan(plan: BaseModel, path: Path | str) -> Path:
    file = Path(path)
    text = plan.model_dump_json(indent=2)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(n.strip() for n in m.group(1).split(",")) + "]", text)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text + "\n", encoding="utf-8")
    return file


def load_plan(kind: type[Plan], path: Path | str) -> Plan:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise PlanFileError(f"{file}: cannot read the plan ({error})") from error
    try:
        return kind.model_validate_json(text)
    except ValidationError as error:
        problems = []
        for item in error.errors()[:5]:
            where = ".".join(str(p) for p in item["loc"])
            found = repr(item["input"])[:60] if where else ""
            problems.append(f"{where}: {item['msg']} (found {found})" if where else item["msg"])
        raise PlanFileError(f"{file}: invalid plan: " + "; ".join(problems)) from error
