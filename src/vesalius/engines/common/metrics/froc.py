"""FROC analysis as LUNA16 scores it: sensitivity at 1/8 to 8 false positives per scan, CPM, scan-bootstrap CIs.

Matching follows LUNA16's ``noduleCADEvaluationLIDC.py``: a candidate hits a reference nodule when its centre
lies within the nodule's radius (here ``<=``; the script's strict ``<`` differs only on the sphere itself);
a nodule counts once, with its highest-probability hit, and further hits on it are dropped (neither TP nor
FP); a candidate may hit two nodules and count for both. A candidate within the radius of an ignore finding
(LUNA16's ``annotations_excluded.csv``: non-nodules, nodules under 3 mm or below consensus; 10 mm diameter when
unknown) is dropped. Every other candidate is a false positive. The curve's points are (false positives per
scan, sensitivity) after each distinct probability, from (0, 0); sensitivity at a rate is interpolated
linearly on that curve as ``numpy.interp`` does in the script, taking the highest sensitivity where the curve
rises vertically, and the last value beyond its end. CPM is the mean of the seven sensitivities.

The CI resamples scans with replacement (as the script's bootstrap does) and recomputes the curve on each
resample; a resample without any nodule has no sensitivity and is skipped and counted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from vesalius.core.errors import EvaluationError, InputError
from vesalius.engines.common.curves import pyplot, save_figure
from vesalius.engines.common.metrics.classification import MetricEstimate
from vesalius.io.annotations.luna import LunaAnnotation, LunaCandidate

FloatArray = npt.NDArray[np.float64]

LUNA16_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per scan at which LUNA16 reads the FROC curve; CPM is the mean sensitivity there."""
UNKNOWN_DIAMETER_MM = 10.0
"""LUNA16's radius rule for an ignore finding of unknown size (diameter -1 in its CSV)."""
MAX_BOOTSTRAP_CELLS = 2_000_000
"""Resample-by-entry weights held at once; bounds memory for many candidates."""

__all__ = [
    "LUNA16_FP_RATES",
    "Candidate",
    "FrocReport",
    "Lesion",
    "froc",
    "froc_from_luna",
    "sensitivity_at",
    "write_froc_png",
]


@dataclass(frozen=True)
class Lesion:
    """A reference nodule or an ignore finding: centre in world mm and diameter (None: unknown)."""

    centre: tuple[float, float, float]
    diameter_mm: float | None


@dataclass(frozen=True)
class Candidate:
    """A detector output on one scan."""

    scan: str
    centre: tuple[float, float, float]
    probability: float


class FrocReport(BaseModel):
    """Sensitivities at the fixed FP rates and CPM with their CIs, the counts behind them, and the curve."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fp_rates: list[float]
    sensitivities: list[MetricEstimate]
    cpm: MetricEstimate
    n_scans: int
    n_nodules: int
    n_detected: int = Field(description="Nodules hit by at least one candidate.")
    n_candidates: int
    n_false_positives: int
    n_ignored: int = Field(description="Candidates on ignore findings only, dropped.")
    n_double_hits: int = Field(description="Extra hits on an already-hit nodule, dropped.")
    curve_fps: list[float] = Field(description="False positives per scan after each distinct probability.")
    curve_sensitivity: list[float]
    band_fps: list[float] = Field(default_factory=list, description="Where the bootstrap band is read.")
    band_low: list[float] = Field(default_factory=list)
    band_high: list[float] = Field(default_factory=list)
    n_bootstrap: int = 1000
    seed: int = 0

    def to_table(self) -> str:
        """Markdown: sensitivity at each FP rate and CPM with their CIs, then the counts."""
        confidence = self.cpm.confidence
        lines = [f"| FP per scan | sensitivity [{confidence:.0%} CI] |", "|---|---|"]
        lines += [f"| {rate:g} | {s.format()} |" for rate, s in zip(self.fp_rates, self.sensitivities, strict=True)]
        lines.append(f"| **CPM** | {self.cpm.format()} |")
        lines.append("")
        lines.append(
            f"{self.n_scans} scans, {self.n_nodules} nodules ({self.n_detected} hit), {self.n_candidates} candidates: "
            f"{self.n_false_positives} false positives, {self.n_ignored} on ignored findings, "
            f"{self.n_double_hits} repeat hits; CI: percentile bootstrap over {self.n_bootstrap} scan resamples."
        )
        return "\n".join(lines)


def sensitivity_at(fps: npt.ArrayLike, sensitivity: npt.ArrayLike, rates: npt.ArrayLike) -> FloatArray:
    """Read a FROC curve (non-decreasing ``fps``, from 0) at ``rates``, as ``numpy.interp`` does in LUNA16.

    Between the last point at or below a rate and the next one, linearly; beyond the end, the last value.
    Explicit, because ``numpy.interp`` leaves repeated x values (vertical steps) undefined.
    """
    x, y, at = (np.asarray(a, dtype=np.float64) for a in (fps, sensitivity, rates))
    j = np.clip(np.searchsorted(x, at, side="right") - 1, 0, x.size - 1)
    following = np.minimum(j + 1, x.size - 1)
    span = x[following] - x[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(span > 0, (at - x[j]) / np.where(span > 0, span, 1.0), 0.0)
    result: FloatArray = y[j] + step * (y[following] - y[j])
    return result


def _within(points: FloatArray, lesions: Sequence[Lesion], unknown_mm: float) -> npt.NDArray[np.bool_]:
    """(candidates, lesions): whether each candidate centre lies within each lesion's radius."""
    if not lesions or not len(points):
        return np.zeros((len(points), len(lesions)), dtype=bool)
    centres = np.asarray([lesion.centre for lesion in lesions], dtype=np.float64)
    diameters = [unknown_mm if d is None or d < 0 else d for d in (lesion.diameter_mm for lesion in lesions)]
    radii = np.asarray(diameters, dtype=np.float64) / 2.0
    distance = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)
    within: npt.NDArray[np.bool_] = distance <= radii[None, :]
    return within


@dataclass
class _Entries:
    """The FROC's samples: one per hit nodule (its best probability) and one per false positive."""

    probability: list[float]
    is_hit: list[bool]
    scan: list[int]
    nodules_per_scan: list[int]
    counts: dict[str, int]


def _match(
    scans: Sequence[str],
    reference: Mapping[str, Sequence[Lesion]],
    candidates: Sequence[Candidate],
    ignore: Mapping[str, Sequence[Lesion]],
) -> _Entries:
    by_scan: dict[str, list[Candidate]] = {scan: [] for scan in scans}
    for candidate in candidates:
        if candidate.scan not in by_scan:
            raise EvaluationError(f"candidate on scan {candidate.scan!r}, which is not among the reference scans")
        if not math.isfinite(candidate.probability):
            raise EvaluationError(f"candidate on scan {candidate.scan!r} has probability {candidate.probability}")
        by_scan[candidate.scan].append(candidate)
    entries = _Entries([], [], [], [], {"detected": 0, "false_positives": 0, "ignored": 0, "double_hits": 0})
    for index, scan in enumerate(scans):
        found = by_scan[scan]
        points = np.asarray([c.centre for c in found], dtype=np.float64).reshape(-1, 3)
        probabilities = np.asarray([c.probability for c in found], dtype=np.float64)
        hits = _within(points, reference.get(scan, ()), UNKNOWN_DIAMETER_MM)
        ignored = _within(points, ignore.get(scan, ()), UNKNOWN_DIAMETER_MM).any(axis=1)
        entries.nodules_per_scan.append(hits.shape[1])
        for column in range(hits.shape[1]):
            if hits[:, column].any():
                entries.probability.append(float(probabilities[hits[:, column]].max()))
                entries.is_hit.append(True)
                entries.scan.append(index)
                entries.counts["detected"] += 1
                entries.counts["double_hits"] += int(hits[:, column].sum()) - 1
        false = ~hits.any(axis=1) & ~ignored
        entries.counts["ignored"] += int(np.sum(~hits.any(axis=1) & ignored))
        entries.counts["false_positives"] += int(false.sum())
        entries.probability += probabilities[false].tolist()
        entries.is_hit += [False] * int(false.sum())
        entries.scan += [index] * int(false.sum())
    return entries


class _Curves:
    """FROC curves of many scan resamples at once, from each resample's per-scan draw counts."""

    def __init__(self, entries: _Entries, n_scans: int) -> None:
        order = np.argsort(-np.asarray(entries.probability, dtype=np.float64), kind="stable")
        probability = np.asarray(entries.probability, dtype=np.float64)[order]
        self.hit = np.asarray(entries.is_hit, dtype=np.float64)[order]
        self.scan = np.asarray(entries.scan, dtype=np.int64)[order]
        last_of_tie = np.r_[probability[1:] != probability[:-1], True] if probability.size else np.zeros(0, bool)
        self.ends = np.flatnonzero(last_of_tie)
        self.nodules = np.asarray(entries.nodules_per_scan, dtype=np.float64)
        self.n_scans = n_scans

    def curves(self, counts: FloatArray) -> tuple[FloatArray, FloatArray]:
        """(resamples, points) false positives per scan and sensitivity, each curve starting at (0, 0)."""
        weights = counts[:, self.scan]
        tp = np.cumsum(weights * self.hit, axis=1)[:, self.ends]
        fp = np.cumsum(weights * (1.0 - self.hit), axis=1)[:, self.ends]
        zeros = np.zeros((counts.shape[0], 1))
        nodules = counts @ self.nodules
        with np.errstate(divide="ignore", invalid="ignore"):
            sensitivity = np.hstack([zeros, tp]) / np.where(nodules > 0, nodules, np.nan)[:, None]
        return np.hstack([zeros, fp]) / self.n_scans, sensitivity

    def read(self, counts: FloatArray, rates: FloatArray) -> FloatArray:
        """(resamples, rates) sensitivities; nan for a resample without nodules."""
        fps, sensitivity = self.curves(counts)
        return np.vstack([sensitivity_at(f, s, rates) for f, s in zip(fps, sensitivity, strict=True)])


def _bootstrap(curves: _Curves, rates: FloatArray, n_bootstrap: int, seed: int) -> FloatArray:
    """(n_bootstrap, rates) sensitivities on scan resamples drawn with replacement."""
    n = curves.n_scans
    rng = np.random.default_rng(seed)
    rows = max(1, MAX_BOOTSTRAP_CELLS // max(curves.scan.size, n, 1))
    result = np.empty((n_bootstrap, rates.size))
    for start in range(0, n_bootstrap, rows):
        stop = min(start + rows, n_bootstrap)
        drawn = rng.integers(0, n, size=(stop - start, n)) + n * np.arange(stop - start)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=(stop - start) * n).reshape(stop - start, n)
        result[start:stop] = curves.read(counts.astype(np.float64), rates)
    return result


def froc(
    reference: Mapping[str, Sequence[Lesion]],
    candidates: Sequence[Candidate],
    ignore: Mapping[str, Sequence[Lesion]] | None = None,
    fp_rates: Sequence[float] = LUNA16_FP_RATES,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> FrocReport:
    """LUNA16 FROC of ``candidates`` against ``reference`` (every evaluated scan, even one without nodules).

    ``ignore`` holds each scan's irrelevant findings. Sensitivities at ``fp_rates`` and CPM (their mean) come
    with percentile CIs over ``n_bootstrap`` scan resamples, reproducible from ``seed``. A candidate on a scan
    outside ``reference`` is an error, since a mistyped series UID would otherwise pass as missed nodules;
    ``froc_from_luna`` filters by a series list instead, as LUNA16 does.
    """
    scans = list(reference)
    if not scans:
        raise EvaluationError("FROC needs at least one reference scan")
    unknown = sorted(set(ignore or {}) - set(scans))
    if unknown:
        raise EvaluationError(f"ignore findings on scan(s) not among the reference scans: {', '.join(unknown[:5])}")
    if not 0.0 < confidence < 1.0 or n_bootstrap < 1:
        raise InputError(f"need 0 < confidence < 1 and n_bootstrap >= 1, got {confidence} and {n_bootstrap}")
    rates = np.asarray(fp_rates, dtype=np.float64)
    if rates.ndim != 1 or not rates.size or not np.all(rates > 0):
        raise InputError(f"fp_rates must be positive false-positive rates per scan, got {list(fp_rates)}")
    entries = _match(scans, reference, candidates, ignore or {})
    n_nodules = sum(entries.nodules_per_scan)
    if n_nodules == 0:
        raise EvaluationError(f"the {len(scans)} reference scan(s) hold no nodule: sensitivity is undefined")
    curves = _Curves(entries, len(scans))
    band = np.geomspace(rates.min(), rates.max(), 64)
    everything = np.concatenate([rates, band])
    point = curves.read(np.ones((1, len(scans))), everything)[0]
    draws = _bootstrap(curves, everything, n_bootstrap, seed)
    cpm_draws = draws[:, : rates.size].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a band point where every resample lacked nodules
        band_low, band_high = np.nanquantile(draws[:, rates.size :], [tail, 1 - tail], axis=0)
    fps, sensitivity = curves.curves(np.ones((1, len(scans))))
    return FrocReport(
        fp_rates=rates.tolist(),
        sensitivities=[
            MetricEstimate.from_draws(float(point[i]), draws[:, i], len(scans), confidence) for i in range(rates.size)
        ],
        cpm=MetricEstimate.from_draws(float(point[: rates.size].mean()), cpm_draws, len(scans), confidence),
        n_scans=len(scans),
        n_nodules=n_nodules,
        n_detected=entries.counts["detected"],
        n_candidates=len(candidates),
        n_false_positives=entries.counts["false_positives"],
        n_ignored=entries.counts["ignored"],
        n_double_hits=entries.counts["double_hits"],
        curve_fps=fps[0].tolist(),
        curve_sensitivity=sensitivity[0].tolist(),
        band_fps=band.tolist(),
        band_low=band_low.tolist(),
        band_high=band_high.tolist(),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


def _lesions(annotations: Sequence[LunaAnnotation], scans: Sequence[str]) -> dict[str, list[Lesion]]:
    found: dict[str, list[Lesion]] = {scan: [] for scan in scans}
    for a in annotations:
        found.setdefault(a.seriesuid, []).append(Lesion(a.centre, a.diameter_mm))
    return found


def froc_from_luna(
    annotations: Sequence[LunaAnnotation],
    candidates: Sequence[LunaCandidate],
    seriesuids: Sequence[str],
    excluded: Sequence[LunaAnnotation] = (),
    **options: Any,
) -> FrocReport:
    """``froc`` on LUNA16 CSV records: ``seriesuids`` lists every evaluated scan (LUNA16's seriesuids.csv);
    annotations, exclusions and candidates on other scans are ignored, as the LUNA16 script does."""
    scans = list(dict.fromkeys(seriesuids))
    wanted = set(scans)
    reference = _lesions([a for a in annotations if a.seriesuid in wanted], scans)
    ignore = _lesions([a for a in excluded if a.seriesuid in wanted], scans)
    found = [Candidate(c.seriesuid, c.centre, c.probability) for c in candidates if c.seriesuid in wanted]
    return froc(reference, found, ignore, **options)


def _curve(report: FrocReport) -> tuple[FloatArray, FloatArray]:
    """The curve's own points between the lowest and highest FP rate, so vertical steps stay vertical."""
    low, high = min(report.fp_rates), max(report.fp_rates)
    fps = np.asarray(report.curve_fps, dtype=np.float64)
    inside = (fps > low) & (fps < high)
    xs = np.r_[low, fps[inside], high]
    ys = np.r_[sensitivity_at(fps, report.curve_sensitivity, [low]), np.asarray(report.curve_sensitivity)[inside]]
    return xs, np.r_[ys, sensitivity_at(fps, report.curve_sensitivity, [high])]


def write_froc_png(
    path: Path | str, report: FrocReport, label: str = "detector", others: Mapping[str, FrocReport] | None = None
) -> Path:
    """The FROC curve on a log false-positive axis (1/8 to 8 per scan) with its bootstrap band and CPM;
    ``others`` adds further curves (e.g. before false-positive reduction) without bands, for comparison."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    low, high = min(report.fp_rates), max(report.fp_rates)
    axis.plot(*_curve(report), color="C0", label=f"{label} (CPM {report.cpm.value:.3f})")
    for number, (name, other) in enumerate((others or {}).items(), start=1):
        axis.plot(*_curve(other), color=f"C{number}", linestyle="--", label=f"{name} (CPM {other.cpm.value:.3f})")
    if report.band_fps:
        confidence = report.cpm.confidence
        axis.fill_between(
            report.band_fps, report.band_low, report.band_high, color="C0", alpha=0.2, label=f"{confidence:.0%} CI"
        )
    axis.plot(report.fp_rates, [s.value for s in report.sensitivities], "o", color="C0")
    axis.set_xscale("log", base=2)
    axis.set_xticks(report.fp_rates, [f"{rate:g}" for rate in report.fp_rates])
    axis.set(xlim=(low, high), ylim=(0, 1.01), xlabel="false positives per scan", ylabel="sensitivity", title="FROC")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(loc="lower right")
    return save_figure(figure, path)
