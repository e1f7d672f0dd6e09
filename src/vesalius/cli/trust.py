"""The trust side of the ``vesalius`` command: ``explain``, and ``predict --explain --uncertainty``."""

from __future__ import annotations

import csv
from pathlib import Path

import typer


def explain(
    model: Path,
    inputs: list[Path],
    output: Path,
    *,
    method: str | None,
    layer: str | None,
    sanity_check: bool,
    uncertainty: str | None,
    passes: int,
    policy: Path | None,
    device: str,
) -> None:
    from vesalius.trust.case import TrustSettings, check_method
    from vesalius.trust.run import read_policy, run_trust

    check_method(method)
    settings = TrustSettings.model_validate(
        {
            "explain": method,
            "layer": layer,
            "sanity_check": sanity_check,
            "uncertainty": uncertainty,
            "passes": passes,
            "policy": None if policy is None else read_policy(policy),
        }
    )
    table = run_trust(model, inputs, output, settings, device=device)
    with table.open(newline="", encoding="utf-8") as handle:
        flagged = sum(row["flagged"] == "true" for row in csv.DictReader(handle))
    typer.echo(f"{len(inputs)} input(s); {flagged} flagged for review; reports and maps in {output}")
    typer.echo(f"wrote {table}")
