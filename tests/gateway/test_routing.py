"""Routing rules: TOML parsing, first-match semantics, every condition, and errors that name file and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from vesalius.gateway.routing import Routing, RoutingError, RoutingRule
from vesalius.gateway.studies import SeriesInfo

RULES = """
[gateway]
port = 11112          # other sections of vesalius.toml are ignored here

[[route]]
name = "chest CT"
modality = "CT"
body_part = "chest"
series_description = "(?i)lung|thorax"
min_rows = 256
min_instances = 40
models = ["lung-nodules", "lung-lobes"]

[[route]]
name = "any CT"
modality = "ct"
models = ["organs"]

[[route]]
name = "small radiographs"
modality = "CR"
max_rows = 2048
max_columns = 2048
models = ["cxr-classifier"]
"""


def _series(**changes: object) -> SeriesInfo:
    values: dict[str, object] = {
        "series_uid": "1.2.3",
        "modality": "CT",
        "description": "Thorax 1mm LUNG",
        "body_part": "CHEST",
        "rows": 512,
        "columns": 512,
        "instance_count": 120,
        "folder": Path("/tmp/x"),
    }
    values.update(changes)
    return SeriesInfo(**values)


def test_first_matching_rule_decides() -> None:
    routing = Routing.from_toml(RULES)
    assert [rule.name for rule in routing.rules] == ["chest CT", "any CT", "small radiographs"]
    assert routing.models_for(_series()) == ["lung-nodules", "lung-lobes"]
    assert routing.models_for(_series(instance_count=10)) == ["organs"]
    assert routing.models_for(_series(description="abdomen")) == ["organs"]
    assert routing.models_for(_series(body_part="ABDOMEN")) == ["organs"]
    assert routing.models_for(_series(rows=128)) == ["organs"]
    assert routing.models_for(_series(modality="MR")) == []
    cr = _series(modality="CR", rows=2048, columns=1024, instance_count=1)
    assert routing.models_for(cr) == ["cxr-classifier"]
    assert routing.models_for(_series(modality="CR", rows=3000, columns=1024)) == []
    assert routing.models_for(_series(modality="CR", rows=None, columns=None)) == []


def test_reads_a_file_and_an_empty_rule_set(tmp_path: Path) -> None:
    path = tmp_path / "vesalius.toml"
    path.write_text(RULES)
    assert len(Routing.from_toml(path).rules) == 3
    assert Routing.from_toml("[gateway]\nport = 1\n").models_for(_series()) == []


def test_rule_without_conditions_matches_everything() -> None:
    assert RoutingRule(models=["m"]).matches(_series(modality="", rows=None))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[route]]\nname = "r"\nmodality = "CT"\n', r"\[\[route\]\] #1 \('r'\): models: Field required"),
        ("[[route]]\nmodels = []\n", r"#1: models: .*at least 1"),
        ('[[route]]\nmodels = ["m"]\n[[route]]\nseries_description = "(lung"\nmodels = ["m"]\n', r"#2: .*regular"),
        ('[[route]]\nmodels = ["m"]\nmin_rows = 600\nmax_rows = 500\n', r"min_rows \(600\) is greater than max_rows"),
        ('[[route]]\nmodels = ["m"]\nmodalty = "CT"\n', r"modalty: Extra inputs are not permitted"),
        ('[[route]]\nmodels = ["m"]\nmin_rows = 0\n', r"min_rows: .*greater than or equal to 1"),
        ('route = "CT"\n', r"'route' must be an array of tables"),
        ("[[route]\n", r"not valid TOML"),
    ],
)
def test_bad_rules_name_the_file_and_the_rule(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(RoutingError, match=message) as raised:
        Routing.from_toml(path)
    assert str(path) in str(raised.value)


def test_missing_file_is_a_routing_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match=r"absent\.toml: cannot read"):
        Routing.from_toml(tmp_path / "absent.toml")
