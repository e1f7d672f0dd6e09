"""The deployment commands: export adds a checked graph, quantize adds INT8 only past its accuracy gate, bench
reports each backend, and predict on ONNX Runtime writes what the torch path writes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.deploy.test_onnx import classification_package, segmentation_package
from tests.engines.classification.test_engine import class_folders
from tests.engines.common.msd_factory import blob_case, write_msd
from vesalius.cli.main import app
from vesalius.deploy import package_int8
from vesalius.deploy.quantize import QuantizationRefused
from vesalius.deploy.runtime import INT8_FILE, ONNX_FILE
from vesalius.engines.common.manifest import load_manifest, verify_package

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

runner = CliRunner()


def invoke(*arguments: str) -> str:
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = classification_package(tmp_path_factory.mktemp("cls") / "package", seed=2)
    output = invoke("export", str(folder), "--onnx")
    assert "max difference" in output
    assert ONNX_FILE in load_manifest(folder).files
    return folder


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_folders(tmp_path_factory.mktemp("data"), per_class=12)


def test_quantize_adds_the_int8_graph_when_the_gate_passes_and_predict_runs_it(
    exported: Path, radiographs: Path, tmp_path: Path
) -> None:
    output = invoke(
        "quantize", str(exported), "--int8", "--calibration", str(radiographs), "--count", "8", "--max-drop", "100"
    )
    assert "AUC" in output
    assert INT8_FILE in load_manifest(exported).files
    assert verify_package(exported) == []
    images = sorted((radiographs / "NORMAL").glob("*.png"))[:3]
    for backend in ("onnxruntime", "onnxruntime-int8"):
        invoke("predict", str(exported), *map(str, images), "-o", str(tmp_path / backend), "--backend", backend)
    with (
        (tmp_path / "onnxruntime" / "predictions.csv").open() as fp32,
        (tmp_path / "onnxruntime-int8" / "predictions.csv").open() as int8,
    ):
        exact, quantised = list(csv.DictReader(fp32)), list(csv.DictReader(int8))
    assert [row["input"] for row in exact] == [row["input"] for row in quantised] == list(map(str, images))
    drift = [abs(float(a["p_PNEUMONIA"]) - float(b["p_PNEUMONIA"])) for a, b in zip(exact, quantised, strict=True)]
    assert max(drift) < 0.2  # close, not equal: INT8 moves the probabilities a little


def test_a_refused_gate_leaves_the_package_as_it_was(
    exported: Path, radiographs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_gate = package_int8.gate
    monkeypatch.setattr(package_int8, "gate", lambda m, fp32, _int8, limit: real_gate(m, fp32, fp32 - 0.05, limit))
    before = (exported / "package.json").read_bytes()
    files = sorted(p.name for p in exported.iterdir())
    with pytest.raises(QuantizationRefused, match=r"5\.0 points below FP32"):
        package_int8.quantize_package(exported, radiographs, count=4)
    assert (exported / "package.json").read_bytes() == before
    assert sorted(p.name for p in exported.iterdir()) == files


def test_bench_reports_every_backend_the_package_can_run(exported: Path, tmp_path: Path) -> None:
    output = invoke("bench", str(exported), "--runs", "3", "--threads", "1", "-o", str(tmp_path / "bench.json"))
    reports = json.loads((tmp_path / "bench.json").read_text())["reports"]
    backends = [report["backend"] for report in reports]
    assert backends[:3] == ["torch", "torch-bf16", "onnxruntime"]
    for report in reports:
        assert report["input_shape"] == [1, 1, 32, 32]
        assert 0 < report["p50_ms"] <= report["p95_ms"]
        assert report["backend"] in output


def test_a_segmenter_is_quantised_on_patches_and_gated_on_dice(tmp_path: Path) -> None:
    folder = segmentation_package(tmp_path / "package", seed=0)
    invoke("export", str(folder), "--onnx")
    cases = [blob_case(f"case{i}", (20, 18, 12), (1.0, 1.0, 2.0), seed=i) for i in range(4)]
    data = write_msd(tmp_path / "msd", cases, modality={"0": "CT"}, labels={"0": "background", "1": "a", "2": "b"})
    report = package_int8.quantize_package(folder, data, count=4, max_drop_points=100)
    assert report.gate.metric == "Dice"
    assert report.validation_items == 2
    assert report.calibration_inputs == 4  # two cases, a random and a labelled centre each
    assert report.path == folder / INT8_FILE
    volume_dir = tmp_path / "out"
    invoke("predict", str(folder), str(data / "imagesTr" / "case0.nii.gz"), "-o", str(volume_dir), "--backend",
           "onnxruntime-int8")  # fmt: skip
    assert (volume_dir / "case0.nii.gz").is_file()
    gate = report.gate
    assert gate.passed
    assert gate.drop_points == pytest.approx(100 * (gate.fp32_value - gate.int8_value))


def test_export_without_a_format_and_predict_with_an_unknown_backend_are_refused(exported: Path) -> None:
    assert runner.invoke(app, ["export", str(exported)]).exit_code != 0
    refused = runner.invoke(app, ["predict", str(exported), str(exported), "-o", "x", "--backend", "tensorrt"])
    assert refused.exit_code != 0


BLOCK_TORCH = """
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "monai", "captum"):
            raise ImportError(f"{name} is blocked: a slim install has no torch")
        return None

sys.meta_path.insert(0, Blocked())
from vesalius.cli.main import app
app(sys.argv[1:])
"""


def test_predict_on_onnxruntime_runs_from_the_command_line_without_torch(
    exported: Path, radiographs: Path, tmp_path: Path
) -> None:
    """What `pip install vesalius[runtime]` gives a hospital server: the command, without torch or MONAI."""
    image = sorted((radiographs / "PNEUMONIA").glob("*.png"))[0]
    arguments = ["predict", str(exported), str(image), "-o", str(tmp_path), "--backend", "onnxruntime"]
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH, *arguments],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with (tmp_path / "predictions.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["input"] == str(image)
    assert row["predicted"] in ("NORMAL", "PNEUMONIA")
