"""LUNA16 FROC: hits within the nodule radius, sensitivity at 1/8..8 FP per scan, CPM, scan-bootstrap CIs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vesalius.core.errors import EvaluationError
from vesalius.engines.common.metrics.froc import (
    LUNA16_FP_RATES,
    Candidate,
    FrocReport,
    Lesion,
    froc,
    froc_from_luna,
    sensitivity_at,
    write_froc_png,
)
from vesalius.io.annotations.luna import LunaAnnotation, LunaCandidate


def nodule(x: float, diameter: float = 10.0) -> Lesion:
    return Lesion((x, 0.0, 0.0), diameter)


def at(scan: str, x: float, probability: float) -> Candidate:
    return Candidate(scan, (x, 0.0, 0.0), probability)


def values(report: FrocReport) -> list[float]:
    return [s.value for s in report.sensitivities]


def test_a_perfect_detector_has_cpm_one() -> None:
    reference = {f"s{i}": [nodule(0.0), nodule(50.0)] for i in range(5)}
    candidates = [at(scan, n.centre[0] + 1.0, 0.9) for scan, found in reference.items() for n in found]
    report = froc(reference, candidates, n_bootstrap=50)
    assert values(report) == [1.0] * 7
    assert report.cpm.value == 1.0
    assert (report.cpm.ci_low, report.cpm.ci_high) == (1.0, 1.0)
    assert (report.n_nodules, report.n_detected, report.n_false_positives) == (10, 10, 0)


def test_one_false_positive_per_scan_above_every_hit_costs_the_low_rates() -> None:
    """The curve goes (0, 0) -> (1, 0) -> (1, 1): nothing is found below one FP per scan, all at one."""
    reference = {f"s{i}": [nodule(0.0)] for i in range(4)}
    candidates = [at(scan, 0.0, 0.5) for scan in reference] + [at(scan, 100.0, 0.9) for scan in reference]
    report = froc(reference, candidates, n_bootstrap=20)
    assert values(report) == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert report.cpm.value == pytest.approx(4 / 7)
    assert report.fp_rates == list(LUNA16_FP_RATES)


def test_sensitivity_is_read_off_the_curve_between_its_points() -> None:
    """Four scans, one nodule each; by falling probability: hit, FP, hit, FP, FP, hit (nodule 4 missed).
    Curve: (0, 0) (0, .25) (.25, .25) (.25, .5) (.5, .5) (.75, .5) (.75, .75); past its end it stays at .75."""
    reference = {f"s{i}": [nodule(0.0)] for i in range(4)}
    candidates = [
        at("s0", 0.0, 0.9),
        at("s0", 80.0, 0.8),
        at("s1", 0.0, 0.7),
        at("s2", 80.0, 0.6),
        at("s3", 80.0, 0.5),
        at("s2", 0.0, 0.4),
    ]
    report = froc(reference, candidates, n_bootstrap=20)
    assert values(report) == pytest.approx([0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75])
    assert report.cpm.value == pytest.approx(4.25 / 7)
    assert (report.n_detected, report.n_false_positives) == (3, 3)


def test_tied_probabilities_make_one_sloped_step() -> None:
    """A hit and two FPs at the same probability on two scans: (0, 0) -> (1, .5), read linearly."""
    reference = {"a": [nodule(0.0)], "b": [nodule(0.0)]}
    candidates = [at("a", 0.0, 0.8), at("a", 60.0, 0.8), at("b", 60.0, 0.8)]
    report = froc(reference, candidates, n_bootstrap=20)
    assert values(report) == pytest.approx([0.0625, 0.125, 0.25, 0.5, 0.5, 0.5, 0.5])


def test_a_hit_lies_within_the_radius_and_counts_once_per_nodule() -> None:
    reference = {"a": [nodule(0.0, diameter=10.0)]}
    on_sphere, outside = at("a", 5.0, 0.6), at("a", -5.01, 0.3)
    report = froc(reference, [on_sphere, outside, at("a", 1.0, 0.9)], n_bootstrap=10)
    assert (report.n_detected, report.n_double_hits, report.n_false_positives) == (1, 1, 1)
    only_on_sphere = froc(reference, [on_sphere], n_bootstrap=10)
    assert only_on_sphere.n_detected == 1  # distance == radius is a hit


def test_the_best_hit_decides_when_the_nodule_is_found() -> None:
    """The nodule counts with its highest-probability hit (0.9), so it is found before the 0.5 FP."""
    reference = {"a": [nodule(0.0)]}
    report = froc(reference, [at("a", 1.0, 0.2), at("a", -1.0, 0.9), at("a", 90.0, 0.5)], n_bootstrap=10)
    assert report.curve_fps == [0.0, 0.0, 1.0]
    assert report.curve_sensitivity == [0.0, 1.0, 1.0]


def test_a_candidate_between_two_nodules_counts_for_both() -> None:
    reference = {"a": [nodule(0.0), nodule(8.0)]}
    report = froc(reference, [at("a", 4.0, 0.7)], n_bootstrap=10)
    assert (report.n_detected, report.n_false_positives) == (2, 0)


def test_candidates_on_ignore_findings_are_neither_hits_nor_false_positives() -> None:
    reference = {"a": [nodule(0.0)], "b": []}
    ignore = {"b": [Lesion((50.0, 0.0, 0.0), None), Lesion((-50.0, 0.0, 0.0), 4.0)]}
    candidates = [
        at("a", 0.0, 0.5),
        at("b", 54.9, 0.9),  # within 5 mm: unknown size counts as 10 mm, as LUNA16 does
        at("b", -51.9, 0.9),  # within 2 mm of the 4 mm finding
        at("b", 55.1, 0.95),  # outside both: a false positive
    ]
    report = froc(reference, candidates, ignore, n_bootstrap=10)
    assert (report.n_ignored, report.n_false_positives) == (2, 1)
    assert report.curve_fps == [0.0, 0.5, 0.5]  # one FP over two scans


def test_sensitivity_at_agrees_with_numpy_interp_and_takes_the_top_of_a_vertical_step() -> None:
    rng = np.random.default_rng(0)
    fps = np.r_[0.0, np.cumsum(rng.uniform(0.05, 1.0, 30))]
    sensitivity = np.r_[0.0, np.sort(rng.uniform(0, 1, 30))]
    rates = np.geomspace(0.01, 40, 200)
    np.testing.assert_allclose(sensitivity_at(fps, sensitivity, rates), np.interp(rates, fps, sensitivity))
    assert sensitivity_at([0, 0, 1, 1], [0, 0.5, 0.5, 1.0], [0, 1, 0.5, 9]).tolist() == [0.5, 1.0, 0.5, 1.0]


def random_case(n_scans: int, seed: int) -> tuple[dict[str, list[Lesion]], list[Candidate]]:
    """Scans with 0-3 nodules; the detector finds most of them and adds FPs with lower probabilities."""
    rng = np.random.default_rng(seed)
    reference: dict[str, list[Lesion]] = {}
    candidates = []
    for s in range(n_scans):
        scan = f"scan{s}"
        reference[scan] = [nodule(100.0 * n, diameter=rng.uniform(4, 20)) for n in range(int(rng.integers(0, 4)))]
        candidates += [at(scan, n.centre[0] + 1, rng.uniform(0.3, 1.0)) for n in reference[scan] if rng.random() < 0.8]
        candidates += [at(scan, 1000.0 + f, rng.uniform(0.0, 0.7)) for f in range(int(rng.integers(0, 12)))]
    return reference, candidates


def test_bootstrap_ci_contains_the_estimate_and_is_reproducible() -> None:
    reference, candidates = random_case(60, seed=1)
    report = froc(reference, candidates, n_bootstrap=300, seed=7)
    for estimate in [*report.sensitivities, report.cpm]:
        assert estimate.ci_low <= estimate.value <= estimate.ci_high
        assert (estimate.n, estimate.n_bootstrap) == (60, 300)
    assert report.cpm.ci_low < report.cpm.ci_high
    assert 0.0 < report.cpm.value < 1.0
    assert froc(reference, candidates, n_bootstrap=300, seed=7) == report
    assert froc(reference, candidates, n_bootstrap=300, seed=8).cpm.ci_low != report.cpm.ci_low
    assert len(report.band_fps) == len(report.band_low) == len(report.band_high)
    assert all(lo <= hi for lo, hi in zip(report.band_low, report.band_high, strict=True))


def test_a_resample_weighs_a_scan_drawn_twice_like_a_copy_of_it() -> None:
    """The bootstrap evaluates resamples from draw counts; a scan drawn twice must count as two scans."""
    from vesalius.engines.common.metrics.froc import _Curves, _match

    reference, candidates = random_case(6, seed=3)
    scans = list(reference)
    counts = np.array([[2.0, 0.0, 1.0, 1.0, 0.0, 2.0]])
    curves = _Curves(_match(scans, reference, candidates, {}), len(scans))
    weighted = curves.read(counts, np.asarray(LUNA16_FP_RATES))[0]
    copies = {f"{scan}#{c}": reference[scan] for scan, n in zip(scans, counts[0], strict=True) for c in range(int(n))}
    copied = [Candidate(f"{c.scan}#{i}", c.centre, c.probability) for c in candidates for i in range(2)]
    explicit = froc(copies, [c for c in copied if c.scan in copies], n_bootstrap=1)
    np.testing.assert_allclose(weighted, values(explicit))


def test_froc_refuses_what_it_cannot_score() -> None:
    with pytest.raises(EvaluationError, match="not among the reference scans"):
        froc({"a": [nodule(0.0)]}, [at("b", 0.0, 0.5)])
    with pytest.raises(EvaluationError, match="hold no nodule"):
        froc({"a": []}, [at("a", 0.0, 0.5)])
    with pytest.raises(EvaluationError, match="at least one"):
        froc({}, [])


def test_luna16_records_are_scored_over_the_listed_series_only() -> None:
    annotations = [LunaAnnotation("1.1", 0.0, 0.0, 0.0, 10.0), LunaAnnotation("9.9", 0.0, 0.0, 0.0, 10.0)]
    excluded = [LunaAnnotation("1.2", 30.0, 0.0, 0.0, None)]
    candidates = [
        LunaCandidate("1.1", 1.0, 0.0, 0.0, 0.8),
        LunaCandidate("1.2", 31.0, 0.0, 0.0, 0.9),  # on an excluded finding
        LunaCandidate("1.2", -40.0, 0.0, 0.0, 0.3),  # a false positive on a scan without nodules
        LunaCandidate("9.9", 0.0, 0.0, 0.0, 0.99),  # a series outside the evaluation
    ]
    report = froc_from_luna(annotations, candidates, ["1.1", "1.2"], excluded, n_bootstrap=10)
    assert (report.n_scans, report.n_nodules, report.n_false_positives, report.n_ignored) == (2, 1, 1, 1)
    assert values(report) == [1.0] * 7


def test_report_table_and_png(tmp_path: Path) -> None:
    reference, candidates = random_case(20, seed=2)
    report = froc(reference, candidates, n_bootstrap=100)
    table = report.to_table()
    assert "| **CPM** |" in table
    assert "| 0.125 |" in table
    assert "| 8 |" in table
    assert "100 scan resamples" in table
    png = write_froc_png(tmp_path / "plots" / "froc.png", report, label="test detector")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    worse = froc(reference, candidates[::2], n_bootstrap=10)
    both = write_froc_png(tmp_path / "both.png", report, label="after", others={"before": worse})
    assert both.read_bytes() != png.read_bytes()
    assert FrocReport.model_validate_json(report.model_dump_json()) == report
