"""The HTML case report: self-contained, escaped, figures embedded, the review banner only when flagged."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pydantic
import pytest
from PIL import Image

from vesalius.writers.maps import overlay_rgb, png_bytes
from vesalius.writers.report import (
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

ATTACK = "<script>alert(1)</script>"
BANNER = "Flagged for review"


def _figure(seed: int) -> tuple[np.ndarray, Figure]:
    rng = np.random.default_rng(seed)
    rgb = overlay_rgb(rng.normal(size=(12, 16)), rng.random((12, 16)))
    return rgb, Figure(caption=f"Slice {seed}", png=png_bytes(rgb))


def _report(*, flagged: bool, figures: tuple[Figure, ...] = (), label: str = "Nodule diameter") -> CaseReport:
    card = ModelCard(
        name="toy-classifier",
        version="1.0.0",
        task="classification",
        intended_use="Triage of chest CT for lung nodules in adults.",
        training_data="LIDC-IDRI, 800 scans (synthetic summary for the test).",
        validation_metrics=(
            MetricRow(name="AUC", value=0.91, ci_low=0.88, ci_high=0.94),
            MetricRow(name="F1", value=0.7),
        ),
        calibration_ece=0.031,
        limitations="Not validated on paediatric scans.",
    )
    return CaseReport(
        title="Lung nodule triage",
        study_description="CT CHEST",
        study_uid="1.2.3.4",
        model=card,
        findings=(Finding(label=label, value=8.25, unit="mm"), Finding(label="Lobe", value="right upper")),
        prediction="Nodule suspicious",
        probability=0.83,
        uncertainty=(UncertaintyScore(name="predictive entropy", value=0.41),),
        flagged=flagged,
        flag_reason="predictive entropy 0.41 > policy threshold 0.30" if flagged else "",
        explanation_method="Integrated Gradients",
        sanity_check=SanityCheck(spearman=0.12, passed=True),
        figures=figures,
    )


def test_the_report_is_self_contained_without_scripts_or_external_urls() -> None:
    html = render_case_report(_report(flagged=True, figures=(_figure(1)[1],))).lower()
    assert "<script" not in html
    assert "http" not in html
    assert not re.search(r"(src|href)\s*=\s*\"(?!data:)", html)
    assert DISCLAIMER.lower() in html


def test_each_figure_is_embedded_as_a_decodable_png_data_uri() -> None:
    (first_rgb, first), (second_rgb, second) = _figure(1), _figure(2)
    html = render_case_report(_report(flagged=False, figures=(first, second)))
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 2
    for encoded, rgb in zip(uris, (first_rgb, second_rgb), strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
        np.testing.assert_array_equal(decoded, rgb)
    assert "Slice 1" in html
    assert "Slice 2" in html


def test_every_text_value_is_escaped() -> None:
    _, figure = _figure(3)
    attacked = Figure(caption=ATTACK, png=figure.png)
    report = _report(flagged=True, figures=(attacked,), label=ATTACK).model_copy(
        update={"title": ATTACK, "prediction": ATTACK, "flag_reason": ATTACK}
    )
    html = render_case_report(report)
    assert ATTACK not in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_review_banner_appears_only_when_flagged() -> None:
    flagged = render_case_report(_report(flagged=True))
    assert BANNER in flagged
    assert "policy threshold 0.30" in flagged
    assert BANNER not in render_case_report(_report(flagged=False))


def test_the_report_shows_the_model_card_and_the_numbers() -> None:
    html = render_case_report(_report(flagged=False))
    for text in ("toy-classifier", "Integrated Gradients", "0.830", "0.88 to 0.94", "0.031", "8.25", "right upper"):
        assert text in html


def test_write_case_report_writes_the_rendered_file(tmp_path: Path) -> None:
    report = _report(flagged=True, figures=(_figure(4)[1],))
    path = write_case_report(report, tmp_path / "reports" / "case.html")
    assert path.read_text(encoding="utf-8") == render_case_report(report)
    assert [p.name for p in path.parent.iterdir()] == ["case.html"]


def test_a_figure_must_be_png_and_the_report_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError, match="expected PNG bytes"):
        Figure(caption="x", png=b"GIF89a...")
    report = _report(flagged=False)
    with pytest.raises(pydantic.ValidationError):
        report.flagged = True
