"""The clinician-facing case report: one self-contained HTML file (inline CSS, images as data URIs)."""

from __future__ import annotations

from vesalius.writers.report.html import (
    DISCLAIMER,
    CaseReport,
    Figure,
    Finding,
    MetricRow,
    ModelCard,
    SanityCheck,
    UncertaintyScore,
    render_case_report,
    write_case_report,
)

__all__ = [
    "DISCLAIMER",
    "CaseReport",
    "Figure",
    "Finding",
    "MetricRow",
    "ModelCard",
    "SanityCheck",
    "UncertaintyScore",
    "render_case_report",
    "write_case_report",
]
