"""Routing rules: which model(s) run on a received series, chosen from its DICOM attributes.

Rules live in the TOML configuration as ``[[route]]`` tables and are tried in file order; the **first** rule
that matches decides (as firewall rules do, so the outcome is predictable from reading the file). A rule that
should run several models lists them all. A series that no rule matches runs no model.

```toml
[[route]]
name = "chest CT"
modality = "CT"
body_part = "CHEST"
series_description = "(?i)lung|thorax"
min_rows = 256
min_instances = 40
models = ["lung-nodules", "lung-lobes"]
```
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vesalius.core.errors import InputError
from vesalius.gateway.studies import SeriesInfo

__all__ = ["Routing", "RoutingError", "RoutingRule"]


class RoutingError(InputError):
    """A routing file cannot be read or one of its rules is invalid; the message names the file and the rule."""


class RoutingRule(BaseModel):
    """Every condition given must hold; conditions left out match anything. Text compares case-insensitively."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    modality: str | None = None
    body_part: str | None = None
    series_description: str | None = None
    """A regular expression searched in SeriesDescription (``re.search``); anchor it with ^...$ if needed."""
    min_rows: int | None = Field(default=None, ge=1)
    max_rows: int | None = Field(default=None, ge=1)
    min_columns: int | None = Field(default=None, ge=1)
    max_columns: int | None = Field(default=None, ge=1)
    min_instances: int | None = Field(default=None, ge=1)
    max_instances: int | None = Field(default=None, ge=1)
    models: list[str] = Field(min_length=1)

    @field_validator("series_description")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"series_description {value!r} is not a valid regular expression: {error}") from None
        return value

    @field_validator("models")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError("model names must not be empty")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> RoutingRule:
        for low, high in (("min_rows", "max_rows"), ("min_columns", "max_columns"), ("min_instances", "max_instances")):
            low_value, high_value = getattr(self, low), getattr(self, high)
            if low_value is not None and high_value is not None and low_value > high_value:
                raise ValueError(f"{low} ({low_value}) is greater than {high} ({high_value})")
        return self

    def matches(self, series: SeriesInfo) -> bool:
        if self.modality is not None and series.modality.strip().upper() != self.modality.strip().upper():
            return False
        if self.body_part is not None and series.body_part.strip().upper() != self.body_part.strip().upper():
            return False
        if self.series_description is not None and re.search(self.series_description, series.description) is None:
            return False
        return (
            _within(series.rows, self.min_rows, self.max_rows)
            and _within(series.columns, self.min_columns, self.max_columns)
            and _within(series.instance_count, self.min_instances, self.max_instances)
        )


def _within(value: int | None, low: int | None, high: int | None) -> bool:
    """A bound on an attribute the series lacks (no Rows, say) does not match."""
    if low is None and high is None:
        return True
    if value is None:
        return False
    return (low is None or value >= low) and (high is None or value <= high)


class Routing:
    """An ordered list of rules; the first match decides."""

    def __init__(self, rules: list[RoutingRule], source: str = "<rules>") -> None:
        self.rules = list(rules)
        self.source = source

    @classmethod
    def from_toml(cls, source: Path | str) -> Routing:
        """Read ``[[route]]`` tables from a file (a ``Path``) or from TOML text (a ``str``); other keys are ignored."""
        if isinstance(source, Path):
            where = str(source)
            try:
                text = source.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                raise RoutingError(f"{where}: cannot read routing rules: {error}") from error
        else:
            where, text = "<routing text>", source
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise RoutingError(f"{where}: not valid TOML: {error}") from error
        return cls(_parse_rules(document.get("route", []), where), where)

    def models_for(self, series: SeriesInfo) -> list[str]:
        """Models of the first matching rule, or [] when none matches."""
        for rule in self.rules:
            if rule.matches(series):
                return list(rule.models)
        return []

    def rule_for(self, series: SeriesInfo) -> RoutingRule | None:
        return next((rule for rule in self.rules if rule.matches(series)), None)


def _parse_rules(raw: Any, where: str) -> list[RoutingRule]:
    if not isinstance(raw, list):
        raise RoutingError(f"{where}: 'route' must be an array of tables ([[route]]), found {type(raw).__name__}")
    rules: list[RoutingRule] = []
    for index, table in enumerate(raw, start=1):
        label = f"[[route]] #{index}"
        if isinstance(table, dict) and isinstance(table.get("name"), str) and table["name"]:
            label += f" ({table['name']!r})"
        if not isinstance(table, dict):
            raise RoutingError(f"{where}: {label} must be a table")
        try:
            rules.append(RoutingRule.model_validate(table))
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'rule'}: {item['msg']}" for item in error.errors()
            )
            raise RoutingError(f"{where}: {label}: {problems}") from None
    return rules
