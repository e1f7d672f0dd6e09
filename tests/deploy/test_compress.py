"""``vesalius distill`` and ``vesalius prune`` end to end: a smaller ordinary package, its lineage, and a report that
scores it and the original alike on the fold's held-out cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.deploy.test_commands import invoke
from tests.engines.classification.test_engine import class_folders, small
from tests.engines.common.msd_factory import blob_case, write_msd
from tests.engines.segmentation.test_trainer import tiny_plan
from vesalius.cli.main import app
from vesalius.deploy.compress import REPORT_JSON, CompressionReport, prune_package
from vesalius.deploy.onnx import export_onnx
from vesalius.engines.classification.dataset import read_classification_dataset
from vesalius.engines.classification.engine import Classifier, fit_classifier, plan_classification, split_items
from vesalius.engines.classification.trainer import probability_score
from vesalius.engines.common.package import load_package
from vesalius.engines.common.plan import SegmentationPlan
from vesalius.engines.segmentation.trainer import train_fold

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

runner = CliRunner()
PATTERN = r"(?P<patient>person\d+)_"


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_folders(tmp_path_factory.mktemp("data"), per_class=24)


@pytest.fixture(scope="module")
def teacher(radiographs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = read_classification_dataset(radiographs, patient_pattern=PATTERN)
    plan = small(plan_classification(dataset, patient_pattern=PATTERN)).model_copy(update={"epochs": 2})
    return fit_classifier(dataset, plan, 0, tmp_path_factory.mktemp("teacher"), device="cpu").package


def test_distill_writes_a_smaller_student_and_scores_both_on_the_held_out_fold(
    teacher: Path, radiographs: Path, tmp_path: Path
) -> None:
    output = invoke(
        "distill", str(teacher), "--student", "width=0.125", str(radiographs), "-o", str(tmp_path),
        "--epochs", "2", "--hint-weight", "1", "--runs", "2", "--device", "cpu",
    )  # fmt: skip
    assert "| teacher |" in output
    assert "| student (width=0.125) |" in output
    report = CompressionReport.model_validate_json((tmp_path / REPORT_JSON).read_text())
    original, student = report.models
    assert student.parameters < original.parameters / 3
    assert student.weights_mb < original.weights_mb
    assert report.package == tmp_path / "fold_0" / "model"
    lineage = load_package(report.package).manifest.metrics["lineage"]
    assert lineage["method"] == "distillation"
    assert lineage["hint_weight"] == 1.0
    assert lineage["temperature"] == 4.0  # the classification default
    assert lineage["teacher"]["manifest_sha256"] == load_package(teacher).manifest.manifest_sha256
    assert not report.seen_by_original  # the teacher's own fold: its held-out images are new to both
    dataset = read_classification_dataset(radiographs, patient_pattern=PATTERN)
    held_out = split_items(dataset, Classifier(teacher).plan, 0, tmp_path / "again")[2]
    assert report.evaluation_items == len(held_out)
    labels = np.asarray([item.label for item in held_out])
    for row in report.models:
        model = Classifier(row.package)
        probabilities = model.probabilities([item.source for item in held_out])
        assert row.metric == pytest.approx(probability_score(model.plan, labels, probabilities))


def test_prune_removes_channels_fine_tunes_and_leaves_an_ordinary_package(
    teacher: Path, radiographs: Path, tmp_path: Path
) -> None:
    output = invoke(
        "prune", str(teacher), "--ratio", "0.5", "--data", str(radiographs), "-o", str(tmp_path), "--epochs", "1",
        "--runs", "2", "--device", "cpu",
    )  # fmt: skip
    assert "pruned 50%, fine-tuned" in output
    report = CompressionReport.model_validate_json((tmp_path / REPORT_JSON).read_text())
    original, pruned, tuned = report.models
    assert pruned.parameters == tuned.parameters < original.parameters / 3
    for row in (pruned, tuned):
        package = load_package(row.package)
        assert package.manifest.plan["network"]["width"] == pytest.approx(0.125)
        assert package.manifest.metrics["lineage"]["ratio"] == 0.5
    source = load_package(teacher).manifest.postprocessing
    assert load_package(pruned.package).manifest.postprocessing == source  # scored as the original until tuned
    export_onnx(tuned.package)  # downstream tools take it as any package
    images = sorted((radiographs / "NORMAL").glob("*.png"))[:2]
    invoke("predict", tuned.package, *map(str, images), "-o", str(tmp_path / "predicted"))
    assert (tmp_path / "predicted" / "predictions.csv").is_file()


def test_a_bad_ratio_or_task_is_refused_by_name(teacher: Path, radiographs: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["prune", str(teacher), "--ratio", "1.5", "--data", str(radiographs), "-o", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "between 0 and 1" in result.output


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cases = [blob_case(f"case_{n}", (24, 24, 20), (1.0, 1.0, 1.0), seed=n) for n in range(6)]
    dataset = write_msd(tmp_path_factory.mktemp("blobs") / "Blobs", cases)
    result = train_fold(
        dataset, tiny_plan(dataset), None, tmp_path_factory.mktemp("seg"), epochs=2, iterations_per_epoch=4
    )
    return dataset, result.package


def test_a_segmenter_is_pruned_through_its_skips_and_distilled_into_fewer_filters(
    blobs: tuple[Path, Path], tmp_path: Path
) -> None:
    dataset, package = blobs
    report = prune_package(package, 0.5, dataset, tmp_path / "pruned", epochs=0, device="cpu", runs=2)
    assert [row.role for row in report.models] == ["original", "pruned 50%"]  # epochs 0: prune only
    assert report.seen_by_original  # trained on every case, so the held-out fold is not new to it
    plan = SegmentationPlan.model_validate(load_package(report.package).manifest.plan)
    assert plan.network.filters == [4, 4, 8]
    assert 0 <= report.models[1].metric <= 1
    output = invoke(
        "distill", str(package), str(dataset), "--student", "filters=4:4:4", "-o", str(tmp_path / "student"),
        "--epochs", "1", "--iterations", "2", "--runs", "2", "--device", "cpu", "--baseline",
    )  # fmt: skip
    assert "Dice on 2 cases" in output
    rows = json.loads((tmp_path / "student" / REPORT_JSON).read_text())["models"]
    assert [row["role"] for row in rows] == ["teacher", "same student, labels only", "student (filters=4:4:4)"]
    assert Path(rows[1]["package"]).is_relative_to(tmp_path / "student" / "baseline")
    assert rows[1]["parameters"] == rows[2]["parameters"]
    student = rows[2]
    manifest = load_package(student["package"]).manifest
    assert manifest.plan["network"]["filters"] == [4, 4, 4]
    assert manifest.metrics["lineage"]["temperature"] == 1.0  # the segmentation default
    assert manifest.postprocessing == load_package(package).manifest.postprocessing
