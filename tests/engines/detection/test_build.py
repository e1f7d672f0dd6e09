"""The lung-nodule model end to end on a chest phantom: train, score the held-out side, package, predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.engines.detection.lung_nodule_fixtures import TINY_PLAN, phantom_background
from tests.engines.detection.test_lung_mask import chest_phantom
from vesalius.cli.main import app
from vesalius.core.errors import InputError, PackageError
from vesalius.engines.common.package import load_package, verify_package
from vesalius.engines.detection.build import REDUCER_WEIGHTS, BuiltModel, build_from_background
from vesalius.engines.detection.evaluation import evaluate_held_out, operating_point
from vesalius.engines.detection.model import FIELDS, LungNoduleModel, combine
from vesalius.engines.detection.recipe import Background
from vesalius.io.nifti import write_nifti


@pytest.fixture(scope="module")
def background() -> Background:
    return phantom_background()


@pytest.fixture(scope="module")
def built(background: Background, tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    run = tmp_path_factory.mktemp("lung-nodules")
    return build_from_background(background, run, TINY_PLAN, device="cpu", n_bootstrap=50)


def test_the_package_is_a_verified_detection_package_with_its_figures(built: BuiltModel) -> None:
    assert verify_package(built.package) == []
    manifest = load_package(built.package).manifest
    assert manifest.task == "detection"
    assert manifest.name == "lung-nodules"
    assert manifest.metrics["inserted_cpm_reduced"] == pytest.approx(built.evaluation.inserted_reduced.cpm.value)
    assert manifest.postprocessing["operating_point"] == built.evaluation.operating_point
    assert manifest.postprocessing["reducer_weight"] in REDUCER_WEIGHTS
    selection = manifest.metrics["reducer_weight_selection"]
    assert set(selection) == {f"{w:g}" for w in REDUCER_WEIGHTS}
    best = max(selection.values())
    assert selection[f"{manifest.postprocessing['reducer_weight']:g}"] == best
    assert manifest.data_fingerprint["reference_nodules"][0]["readers"] == 4
    weights = load_package(built.package).state_dict()
    assert any(name.startswith("detector.") for name in weights)
    assert any(name.startswith("false_positive.") for name in weights)
    for name in ("inserted", "real"):
        assert (built.package.parent / f"froc_{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_the_shipped_weights_give_the_recorded_figures(built: BuiltModel, background: Background) -> None:
    model = LungNoduleModel.from_package(built.package)
    again = evaluate_held_out(model, background, n_bootstrap=50)
    assert again.summary() == pytest.approx(built.evaluation.summary())


def test_the_evaluation_counts_only_the_held_out_side(built: BuiltModel) -> None:
    evaluation = built.evaluation
    assert evaluation.held_out_side == "left"
    assert evaluation.inserted_reduced.n_scans == TINY_PLAN.data.held_out_scans
    assert evaluation.inserted_reduced.n_nodules == TINY_PLAN.data.held_out_scans * 2
    assert evaluation.real_reduced.n_nodules == 1
    assert len(evaluation.real_nodules) == 1
    assert 0.0 <= evaluation.sensitivity_at_operating_point <= 1.0
    assert evaluation.false_positives_per_scan_at_operating_point <= 1.0
    assert evaluation.seconds_per_scan > 0
    by_weight = evaluation.inserted_cpm_by_reducer_weight
    assert by_weight["0"] == pytest.approx(evaluation.inserted_detector.cpm.value)
    chosen = load_package(built.package).manifest.postprocessing["reducer_weight"]
    assert by_weight[f"{chosen:g}"] == pytest.approx(evaluation.inserted_reduced.cpm.value)


def test_findings_are_ranked_by_the_combined_probability_and_flagged_at_the_operating_point(
    built: BuiltModel,
) -> None:
    model = LungNoduleModel.from_package(built.package)
    findings = model.find(chest_phantom(seed=5).volume)
    assert 0 < len(findings) <= TINY_PLAN.max_candidates
    scores = [f.probability for f in findings]
    assert scores == sorted(scores, reverse=True)
    for finding in findings:
        assert finding.probability == pytest.approx(
            float(combine(finding.detector_probability, finding.reducer_probability, model.reducer_weight))
        )
        assert finding.nodule == (finding.probability >= model.operating_point)
        assert finding.malignancy is None


def test_predict_writes_luna_style_csv_and_json(built: BuiltModel, tmp_path: Path) -> None:
    source = write_nifti(chest_phantom(seed=5).volume, tmp_path / "chest.nii.gz")
    result = CliRunner().invoke(app, ["predict", str(built.package), str(source), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with (tmp_path / "out" / "nodules.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    assert tuple(rows[0]) == FIELDS
    document = json.loads((tmp_path / "out" / "nodules.json").read_text(encoding="utf-8"))
    assert len(document["nodules"]) == len(rows)
    assert document["nodules"][0]["centre"][0] == pytest.approx(float(rows[0]["coordX"]), abs=0.01)


def test_a_rerun_resumes_every_stage_and_writes_the_same_weights(background: Background, built: BuiltModel) -> None:
    run = built.package.parent
    again = build_from_background(background, run, TINY_PLAN, device="cpu", n_bootstrap=50)
    first = load_package(built.package).manifest.files["weights.safetensors"]
    assert load_package(again.package).manifest.files["weights.safetensors"] == first


def test_a_segmentation_or_tampered_package_is_refused(built: BuiltModel, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for path in built.package.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(PackageError):
        LungNoduleModel.from_package(copy)


def test_the_operating_point_allows_at_most_the_rate_of_false_positives() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    labels = np.array([1, 0, 1, 0, 0, -1])
    threshold = operating_point(scores, labels, scans=2, rate=1.0)
    assert np.count_nonzero((labels == 0) & (scores >= threshold)) == 2
    assert 0.5 < threshold <= 0.6
    assert operating_point(scores, labels, scans=5) == 0.0


def test_the_combined_score_weighs_the_reducer_between_ignoring_it_and_trusting_it_alone() -> None:
    detector, reducer = np.array([0.9, 0.2]), np.array([0.1, 0.8])
    np.testing.assert_allclose(combine(detector, reducer, 0.0), detector)
    np.testing.assert_allclose(combine(detector, reducer, 1.0), reducer)
    np.testing.assert_allclose(combine(detector, reducer, 0.5), np.sqrt(detector * reducer))
    with pytest.raises(InputError, match="weight"):
        combine(detector, reducer, 1.5)
