"""ONNX export: the package gains a verified model.onnx whose logits match torch at several shapes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.engines.classification.factory import random_classifier_package
from tests.engines.segmentation.test_predict import make_package
from vesalius.core.errors import InputError
from vesalius.deploy.onnx import ONNX_FILE, ExportReport, export_onnx
from vesalius.engines.classification.networks import ClassificationNetwork
from vesalius.engines.classification.plan import ClassificationPlan, make_classification_plan
from vesalius.engines.common.package import (
    MANIFEST,
    WEIGHTS,
    load_package,
    resave_package,
    save_package,
    verify_package,
)
from vesalius.engines.common.plan import SegmentationPlan

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def classification_package(folder: Path, seed: int = 0) -> Path:
    """An untrained binary ResNet-10 (quarter width) on 32 x 32 images with flip TTA, stored in float16 as the
    engine ships it, with a temperature and an operating point recorded."""
    plan = make_classification_plan(
        dataset_name="toy",
        kind="binary",
        class_names=["NORMAL", "PNEUMONIA"],
        class_counts=[10, 10],
        median_size=[24, 20],
        channels=1,
        architecture="resnet10",
        width=0.25,
        input_size=[32, 32],
        flip_axes=[1],
    )
    return random_classifier_package(
        folder,
        plan,
        seed=seed,
        postprocessing={"temperature": 1.7, "threshold": 0.4},
        weights_dtype=torch.float16,
        jitter_batch_norm=True,  # so eval mode matters
    )


def segmentation_package(folder: Path, seed: int = 0) -> Path:
    """A tiny DynUNet (deep supervision on) with largest-component post-processing of class 1 recorded."""
    return resave_package(make_package(folder, seed=seed), postprocessing={"keep_largest_component": [1]})


@pytest.fixture(scope="module")
def classification_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport, dict[str, object]]:
    folder = classification_package(tmp_path_factory.mktemp("cls") / "package")
    before = json.loads((folder / MANIFEST).read_text())
    return folder, export_onnx(folder), before


@pytest.fixture(scope="module")
def segmentation_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    folder = segmentation_package(tmp_path_factory.mktemp("seg") / "package")
    return folder, export_onnx(folder)


def torch_network(folder: Path) -> torch.nn.Module:
    package = load_package(folder)
    network: torch.nn.Module
    if package.manifest.task == "segmentation":
        network = SegmentationPlan.model_validate(package.manifest.plan).network.build()
    else:
        network = ClassificationNetwork.build(ClassificationPlan.model_validate(package.manifest.plan).network)
    network.load_state_dict(package.state_dict())
    return network.float().eval()


def largest_difference(folder: Path, shapes: Sequence[tuple[int, ...]]) -> list[float]:
    """max |ORT - torch| of the logits for seeded random inputs of each shape."""
    network = torch_network(folder)
    session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    differences = []
    for shape in shapes:
        image = rng.normal(0.0, 1.0, shape).astype(np.float32)
        with torch.inference_mode():
            expected = network(torch.from_numpy(image)).numpy()
        found = session.run(None, {session.get_inputs()[0].name: image})[0]
        assert found.shape == expected.shape
        differences.append(float(np.abs(found - expected).max()))
    return differences


def test_export_adds_a_hashed_model_onnx_and_keeps_the_rest_of_the_package(
    classification_export: tuple[Path, ExportReport, dict[str, object]],
) -> None:
    folder, report, before = classification_export
    assert verify_package(folder) == []
    after = json.loads((folder / MANIFEST).read_text())
    assert set(after["files"]) == {WEIGHTS, ONNX_FILE}
    assert after["files"][WEIGHTS] == before["files"][WEIGHTS]  # type: ignore[index]  # weights bytes unchanged
    for field in ("name", "version", "task", "labels", "plan", "metrics", "data_fingerprint", "postprocessing"):
        assert after[field] == before[field]
    assert load_package(folder).path(ONNX_FILE) == report.path == folder / ONNX_FILE
    assert report.size_bytes == report.path.stat().st_size > 0
    assert report.opset == 18
    assert report.input_shapes == [[1, 1, 32, 32], [2, 1, 32, 32], [1, 1, 48, 49]]
    assert report.max_abs_diff == max(c.max_abs_diff for c in report.inputs) <= report.tolerance == 1e-3
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no scratch left behind


def test_classification_graph_matches_torch_at_two_sizes_and_batch_two(
    classification_export: tuple[Path, ExportReport, dict[str, object]],
) -> None:
    folder = classification_export[0]
    assert max(largest_difference(folder, [(1, 1, 32, 32), (2, 1, 32, 32), (3, 1, 40, 26)])) < 1e-4


def test_segmentation_graph_gives_the_eval_output_at_two_sizes_and_batch_two(
    segmentation_export: tuple[Path, ExportReport],
) -> None:
    folder, report = segmentation_export
    assert verify_package(folder) == []
    assert report.input_shapes[-1] == [1, 1, 20, 24, 28]  # not a multiple of the 16^3 patch
    session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 1  # the deep-supervision heads are not exported
    assert max(largest_difference(folder, [(2, 1, 16, 16, 16), (1, 1, 24, 20, 16)])) < 1e-4


def test_export_refuses_a_graph_outside_the_tolerance_and_leaves_the_package_as_it_was(tmp_path: Path) -> None:
    folder = segmentation_package(tmp_path / "package")
    manifest = (folder / MANIFEST).read_bytes()
    with pytest.raises(InputError, match="tolerance 1e-12"):
        export_onnx(folder, tolerance=1e-12, exporters=("torchscript",))
    assert (folder / MANIFEST).read_bytes() == manifest
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, WEIGHTS]


def test_check_shapes_are_validated_and_other_tasks_refused(tmp_path: Path) -> None:
    folder = classification_package(tmp_path / "cls")
    with pytest.raises(InputError, match="check_inputs"):
        export_onnx(folder, check_inputs=[(1, 32, 32)])
    detection = save_package(
        tmp_path / "det",
        name="det",
        version="0.1.0",
        task="detection",
        labels={0: "nodule"},
        plan={},
        metrics={},
        data_fingerprint={},
        state_dict={"weight": torch.zeros(1)},
    )
    with pytest.raises(InputError, match="detection package"):
        export_onnx(detection)
