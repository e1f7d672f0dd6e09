"""``vesalius explain`` and ``predict --explain --uncertainty``: every input through the trust stack, its files
written, and one ``trust.csv`` row per input (prediction, scores, review flag, sanity check) for audit."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import pydicom

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.classification.engine import Classifier
from vesalius.engines.classification.images import input_sources
from vesalius.engines.common.package import load_package
from vesalius.engines.common.precision import pick_device
from vesalius.engines.segmentation.predict import Predictor
from vesalius.engines.segmentation.run_layout import model_packages, stored_postprocessing
from vesalius.io import read_volume
from vesalius.trust.abstain import AbstainPolicy
from vesalius.trust.case import CaseTrust, TrustSettings, model_summary, trust_classification, trust_segmentation
from vesalius.trust.outputs import case_stem, write_case

SCORES = ("predictive_entropy", "mutual_information", "variance", "least_confidence")

__all__ = ["read_policy", "run_trust"]


def read_policy(path: Path | str) -> AbstainPolicy:
    """An abstain policy written by a trust benchmark (JSON); a clear error for anything else."""
    file = Path(path)
    try:
        return AbstainPolicy.model_validate_json(file.read_text())
    except FileNotFoundError as error:
        raise InputError(f"{file}: no such abstain-policy file") from error
    except ValueError as error:
        raise InputError(f"{file}: not an abstain policy ({error.__class__.__name__}: {error})") from error


def _dicom_sources(path: Path, volume: Volume) -> list[pydicom.Dataset]:
    """The DICOM instances of ``volume``'s series under ``path`` (headers only), for PACS-side outputs."""
    series = volume.identity.series_instance_uid
    if series is None:
        return []
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    found: list[pydicom.Dataset] = []
    for file in files:
        try:
            dataset = pydicom.dcmread(file, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError):
            continue
        if str(dataset.get("SeriesInstanceUID", "")) == series:
            found.append(dataset)
    return found


def _dicom_header(path: Path) -> list[pydicom.Dataset]:
    """A single DICOM image's header (for the Secondary Capture in its study); nothing for other files."""
    if not path.is_file():
        return []
    try:
        return [pydicom.dcmread(path, stop_before_pixels=True)]
    except (pydicom.errors.InvalidDicomError, OSError):
        return []


def _row(case: CaseTrust, files: Sequence[Path]) -> list[str]:
    sanity = case.sanity
    return [
        case.name,
        case.prediction,
        "" if case.probability is None else f"{case.probability:.6f}",
        *[f"{case.scores[name]:.6f}" if name in case.scores else "" for name in SCORES],
        str(case.flagged).lower(),
        case.explanation_method or "",
        "" if sanity is None else f"{sanity.spearman:.4f}",
        "" if sanity is None else str(sanity.passed).lower(),
        str(files[-1].name) if files else "",
    ]


def _cases(
    model: Path, inputs: Sequence[Path], settings: TrustSettings, device: str
) -> list[tuple[CaseTrust, list[pydicom.Dataset]]]:
    """Each input's CaseTrust with the DICOM headers its outputs refer to."""
    packages = model_packages(model)
    manifest = load_package(packages[0], verify=False).manifest
    if manifest.task == "classification":
        classifier = Classifier(packages[0], device=device)
        return [
            (trust_classification(classifier, source, settings), _dicom_header(source.path))
            for _, source in input_sources(inputs)
        ]
    if manifest.task != "segmentation":
        raise InputError(f"{model}: explain covers classification and segmentation packages; this is {manifest.task}")
    postprocessing = stored_postprocessing(model) if packages != [model] else None  # as predict ensembles folds
    predictor = Predictor(
        [load_package(p) for p in packages], device=pick_device(device), postprocessing=postprocessing
    )
    cases: list[tuple[CaseTrust, list[pydicom.Dataset]]] = []
    for path in inputs:
        volume = read_volume(path)
        cases.append((trust_segmentation(predictor, volume, settings, str(path)), _dicom_sources(Path(path), volume)))
    return cases


def run_trust(
    model: Path | str, inputs: Sequence[Path | str], output: Path | str, settings: TrustSettings, device: str = "auto"
) -> Path:
    """Write each input's maps, overlays, DICOM objects and report under ``output``; return trust.csv."""
    model, out = Path(model), Path(output)
    paths = [Path(item) for item in inputs]
    cases = _cases(model, paths, settings, device)
    stems = [case_stem(case.name) for case, _ in cases]
    if len(set(stems)) != len(stems):
        raise InputError(f"inputs would overwrite each other's outputs in {out}: {sorted(stems)}")
    summary = model_summary(load_package(model_packages(model)[0], verify=False).manifest)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "trust.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["input", "predicted", "probability", *SCORES, "flagged", "explanation", "sanity_spearman",
             "sanity_passed", "report"]
        )  # fmt: skip
        for case, sources in cases:
            writer.writerow(_row(case, write_case(case, out, summary, sources)))
    return table
