"""A self-contained HTML case report a clinician can read: what the model says, how sure it is, and why.

One file, no JavaScript, no external URL (styles inline, figures as base64 PNG data URIs), so it opens the
same from a PACS attachment, an e-mail or a disconnected reading room. Every text value is HTML-escaped by
jinja2's autoescape, because labels and captions may come from user input or DICOM headers.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import tempfile
from pathlib import Path

import jinja2
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vesalius import __version__

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

DISCLAIMER = "Decision support; not a diagnosis. Review by a qualified clinician is required."
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricRow(_Frozen):
    """One validation metric with its confidence interval (bounds absent when none was computed)."""

    name: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None


class ModelCard(_Frozen):
    """The model-card summary a reader needs to judge whether the model fits this case."""

    name: str
    version: str
    task: str
    intended_use: str
    training_data: str
    validation_metrics: tuple[MetricRow, ...] = ()
    calibration_ece: float | None = None
    limitations: str = ""


class Finding(_Frozen):
    """One measured or detected finding, e.g. ("Nodule volume", 412.0, "mm3")."""

    label: str
    value: float | str
    unit: str = ""


class UncertaintyScore(_Frozen):
    name: str
    value: float


class SanityCheck(_Frozen):
    """Model-randomisation check of the explanation (Adebayo et al.): a low rank correlation passes."""

    spearman: float
    passed: bool


class Figure(_Frozen):
    caption: str
    png: bytes

    @field_validator("png")
    @classmethod
    def _is_png(cls, value: bytes) -> bytes:
        if not value.startswith(_PNG_SIGNATURE):
            raise ValueError(f"figure png: expected PNG bytes (signature {_PNG_SIGNATURE!r}), got {value[:8]!r}")
        return value


class CaseReport(_Frozen):
    """Everything the HTML report shows. Only study description and UID identify the case: no other PHI."""

    title: str
    study_description: str | None = None
    study_uid: str | None = None
    model: ModelCard
    findings: tuple[Finding, ...] = ()
    prediction: str
    probability: float | None = Field(default=None, ge=0.0, le=1.0)
    uncertainty: tuple[UncertaintyScore, ...] = ()
    flagged: bool = False
    flag_reason: str = ""
    """Why the case is flagged; when not flagged, an optional note shown instead (e.g. that no policy was set)."""
    explanation_method: str | None = None
    sanity_check: SanityCheck | None = None
    figures: tuple[Figure, ...] = ()
    created: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    vesalius_version: str = __version__


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ r.title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #1a1a1a; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { background: #b00020; color: #fff; padding: 0.8em 1em; font-weight: bold; font-size: 1.1em; }
.disclaimer { border: 2px solid #555; padding: 0.6em 1em; background: #fafafa; font-weight: bold; }
.prediction { font-size: 1.2em; } .meta { color: #555; font-size: 0.9em; }
figure { display: inline-block; margin: 0.5em; } figure img { max-width: 28em; image-rendering: pixelated; }
.pass { color: #006400; } .fail { color: #b00020; }
</style>
</head>
<body>
{% if r.flagged %}<div class="banner" role="alert">Flagged for review: {{ r.flag_reason }}</div>
{% endif %}<h1>{{ r.title }}</h1>
<p class="meta">{% if r.study_description %}Study: {{ r.study_description }}. {% endif %}
{% if r.study_uid %}Study Instance UID: {{ r.study_uid }}. {% endif %}
Created {{ r.created.isoformat(timespec="seconds") }} by Vesalius {{ r.vesalius_version }}.</p>
<p class="disclaimer">{{ disclaimer }}</p>

<h2>Result</h2>
<p class="prediction">{{ r.prediction }}{% if r.probability is not none %}
(probability {{ "%.3f"|format(r.probability) }}){% endif %}</p>
{% if r.findings %}<table><tr><th>Finding</th><th>Value</th><th>Unit</th></tr>
{% for f in r.findings %}<tr><td>{{ f.label }}</td><td class="num">{{ number(f.value) }}</td><td>{{ f.unit }}</td></tr>
{% endfor %}</table>{% endif %}

<h2>Uncertainty</h2>
{% if r.uncertainty %}<table><tr><th>Score</th><th>Value</th></tr>
{% for u in r.uncertainty %}<tr><td>{{ u.name }}</td><td class="num">{{ number(u.value) }}</td></tr>
{% endfor %}</table>{% else %}<p>No uncertainty score was computed.</p>{% endif %}
<p>{% if r.flagged %}Flagged for review by the uncertainty policy: {{ r.flag_reason }}{% elif r.flag_reason %}{{
r.flag_reason }}{% else %}Not flagged by the uncertainty policy.{% endif %}</p>

{% if r.explanation_method or r.figures %}<h2>Explanation</h2>
{% if r.explanation_method %}<p>Method: {{ r.explanation_method }}.
{% if r.sanity_check %}Model-randomisation sanity check: Spearman {{ "%.3f"|format(r.sanity_check.spearman) }},
<span class="{{ 'pass' if r.sanity_check.passed else 'fail' }}">{{ "passed" if r.sanity_check.passed else
"failed: the map may not reflect what the model learned" }}</span>.{% endif %}</p>{% endif %}
{% for fig in figures %}<figure><img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.caption }}">
<figcaption>{{ fig.caption }}</figcaption></figure>
{% endfor %}{% endif %}

<h2>Model</h2>
<table>
<tr><th>Name</th><td>{{ r.model.name }}</td></tr>
<tr><th>Version</th><td>{{ r.model.version }}</td></tr>
<tr><th>Task</th><td>{{ r.model.task }}</td></tr>
<tr><th>Intended use</th><td>{{ r.model.intended_use }}</td></tr>
<tr><th>Training data</th><td>{{ r.model.training_data }}</td></tr>
{% if r.model.calibration_ece is not none %}<tr><th>Calibration (ECE)</th>
<td class="num">{{ "%.3f"|format(r.model.calibration_ece) }}</td></tr>{% endif %}
{% if r.model.limitations %}<tr><th>Limitations</th><td>{{ r.model.limitations }}</td></tr>{% endif %}
</table>
{% if r.model.validation_metrics %}<table><tr><th>Validation metric</th><th>Value</th><th>95% CI</th></tr>
{% for m in r.model.validation_metrics %}<tr><td>{{ m.name }}</td><td class="num">{{ number(m.value) }}</td>
<td class="num">{% if m.ci_low is not none and m.ci_high is not none %}{{ number(m.ci_low) }} to {{ number(m.ci_high)
}}{% else %}-{% endif %}</td></tr>
{% endfor %}</table>{% endif %}
</body>
</html>
"""

_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_COMPILED = _ENVIRONMENT.from_string(_TEMPLATE)


def _number(value: float | str) -> str:
    """Four significant digits for numbers; text values are shown as given."""
    return value if isinstance(value, str) else f"{value:.4g}"


def render_case_report(report: CaseReport) -> str:
    """The report as one HTML document (a string)."""
    figures = [
        {"caption": figure.caption, "data": base64.b64encode(figure.png).decode("ascii")} for figure in report.figures
    ]
    return _COMPILED.render(r=report, figures=figures, disclaimer=DISCLAIMER, number=_number)


def write_case_report(report: CaseReport, path: Path | str) -> Path:
    """Write the HTML report atomically (parent folders created), so a reader never opens half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=".writing-", suffix=".html", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(render_case_report(report))
        os.chmod(scratch, 0o644)  # mkstemp makes it private; a report is for readers, like the maps beside it
        os.replace(scratch, target)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return target
