"""INT8 quantisation: smaller QDQ files that still agree with FP32, run at any batch and size, behind a gate."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.export import Dim

from vesalius.core.errors import InputError
from vesalius.deploy.quantize import (
    AccuracyGate,
    ArrayCalibrationReader,
    QuantizationRefused,
    check_gate,
    classification_auc,
    gate,
    quantize_int8,
)

FloatArray = npt.NDArray[np.float32]
SIZE = 16


def _squares(
    count: int, rng: np.random.Generator, size: int = SIZE, brightness: float = 2.0
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Noise images; class 1 holds a bright 5x5 square somewhere, so the answer is known and learnable."""
    images = rng.normal(0.0, 1.0, (count, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, 2, count)
    for image, label in zip(images, labels, strict=True):
        if label:
            row, column = rng.integers(0, size - 5, 2)
            image[0, row : row + 5, column : column + 5] += brightness
    return images, labels.astype(np.int64)


def _classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


def _export(module: nn.Module, example: torch.Tensor, path: Path, external_data: bool = False) -> Path:
    """Dynamic batch and spatial axes, as the deploy export writes them; ``external_data`` puts weights in .data."""
    axes = {0: Dim.DYNAMIC, **{axis: Dim.DYNAMIC for axis in range(2, example.ndim)}}
    torch.onnx.export(
        module.eval(),
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=(axes,),
        external_data=external_data,
    )
    return path


def _run(path: Path, images: FloatArray) -> FloatArray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output: FloatArray = session.run(None, {"image": images})[0]
    return output


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A 2-D classifier trained for a few steps on the squares task, and its FP32 ONNX."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = _classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        images, labels = _squares(32, rng)
        loss = nn.functional.cross_entropy(model(torch.from_numpy(images)), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    path = _export(model, torch.zeros(2, 1, SIZE, SIZE), tmp_path_factory.mktemp("fp32") / "classifier.onnx")
    return model.eval(), path


@pytest.fixture(scope="module")
def quantized(trained: tuple[nn.Module, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    calibration = [_squares(8, rng)[0] for _ in range(8)]
    return quantize_int8(trained[1], tmp_path_factory.mktemp("int8") / "sub" / "classifier.int8.onnx", calibration)


@pytest.fixture(scope="module")
def test_set() -> tuple[FloatArray, npt.NDArray[np.int64]]:
    return _squares(200, np.random.default_rng(2))


def test_int8_file_is_smaller_and_holds_quantize_dequantize_nodes(
    trained: tuple[nn.Module, Path], quantized: Path
) -> None:
    assert quantized.is_file()
    assert quantized.stat().st_size < 0.5 * trained[1].stat().st_size
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(quantized)
    assert not {"QuantizeLinear", "DequantizeLinear"} & _op_types(trained[1])


def test_weights_are_int8_per_channel(quantized: Path) -> None:
    graph = onnx.load(str(quantized)).graph
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    conv_weight_dq = [
        node for node in graph.node if node.op_type == "DequantizeLinear" and weights.get(node.input[0]) is not None
    ]
    quantized_weights = [weights[node.input[0]] for node in conv_weight_dq if weights[node.input[0]].ndim == 4]
    assert len(quantized_weights) == 3
    assert all(weight.dtype == np.int8 for weight in quantized_weights)
    scales = [weights[node.input[1]] for node in conv_weight_dq if weights[node.input[0]].ndim == 4]
    assert [scale.shape for scale in scales] == [(16,), (32,), (32,)]


def test_int8_predictions_agree_with_fp32(
    trained: tuple[nn.Module, Path], quantized: Path, test_set: tuple[FloatArray, npt.NDArray[np.int64]]
) -> None:
    images, labels = test_set
    fp32, int8 = _run(trained[1], images), _run(quantized, images)
    assert np.mean(fp32.argmax(axis=1) == labels) >= 0.9, "the classifier should have learnt the task"
    assert np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1)) >= 0.9
    assert not np.array_equal(fp32, int8), "INT8 arithmetic should change the logits a little"


@pytest.mark.parametrize(("batch", "size"), [(1, SIZE), (5, SIZE), (3, 24)])
def test_int8_graph_runs_with_any_batch_and_size(quantized: Path, batch: int, size: int) -> None:
    images, _ = _squares(batch, np.random.default_rng(3), size=size)
    assert _run(quantized, images).shape == (batch, 2)


def test_classification_auc_matches_scikit_learn_on_the_same_scores(
    trained: tuple[nn.Module, Path], quantized: Path
) -> None:
    images, labels = _squares(200, np.random.default_rng(5), brightness=0.7)  # faint squares: AUC well below 1
    with torch.inference_mode():
        probabilities = torch.softmax(trained[0](torch.from_numpy(images)), dim=1)[:, 1].numpy()
    expected = roc_auc_score(labels, probabilities)
    assert 0.6 < expected < 0.98
    assert classification_auc(trained[1], images, labels, batch_size=7) == pytest.approx(expected, abs=1e-6)
    int8_auc = classification_auc(ort.InferenceSession(str(quantized)), images, labels)
    assert gate("AUC", expected, int8_auc, threshold_points=3.0).passed


def test_classification_auc_refuses_labels_of_another_length(
    trained: tuple[nn.Module, Path], test_set: tuple[FloatArray, npt.NDArray[np.int64]]
) -> None:
    images, labels = test_set
    with pytest.raises(InputError, match="labels"):
        classification_auc(trained[1], images, labels[:-1])


def _threshold_labels(volumes: torch.Tensor) -> torch.Tensor:
    """Known answer per voxel: 1 where bright, 2 where dark, 0 between."""
    labels = torch.zeros(volumes.shape[0], *volumes.shape[2:], dtype=torch.int64)
    labels[volumes[:, 0] > 0.5] = 1
    labels[volumes[:, 0] < -0.5] = 2
    return labels


def test_3d_segmenter_quantizes_with_percentile_calibration_and_keeps_its_voxels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    segmenter = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1), nn.ReLU())
    segmenter.append(nn.Conv3d(8, 3, 1))
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=1e-2)
    for _ in range(40):
        volumes = torch.randn(2, 1, 8, 8, 8)
        loss = nn.functional.cross_entropy(segmenter(volumes), _threshold_labels(volumes))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    fp32 = _export(segmenter, torch.zeros(1, 1, 8, 8, 8), tmp_path / "segmenter.onnx", external_data=True)
    assert (tmp_path / "segmenter.onnx.data").is_file(), "weights kept beside the graph, as torch.export writes them"
    rng = np.random.default_rng(4)
    calibration = [rng.normal(size=(2, 1, 8, 8, 8)).astype(np.float32) for _ in range(4)]
    int8 = quantize_int8(fp32, tmp_path / "segmenter.int8.onnx", calibration, method="percentile")
    volume = rng.normal(size=(2, 1, 12, 10, 6)).astype(np.float32)
    expected, found = _run(fp32, volume), _run(int8, volume)
    assert found.shape == expected.shape == (2, 3, 12, 10, 6)
    assert np.mean(expected.argmax(axis=1) == found.argmax(axis=1)) >= 0.9
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(int8)


def test_empty_calibration_is_refused_and_nothing_written(trained: tuple[nn.Module, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="calibration set is empty"):
        quantize_int8(trained[1], tmp_path / "int8.onnx", [])
    assert not (tmp_path / "int8.onnx").exists()


def test_calibration_of_the_wrong_rank_is_refused(trained: tuple[nn.Module, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"batch 1 has shape \(1, 16, 16\)"):
        quantize_int8(trained[1], tmp_path / "int8.onnx", [np.zeros((1, 1, 16, 16)), np.zeros((1, 16, 16))])


def test_unknown_method_and_missing_model_are_refused(trained: tuple[nn.Module, Path], tmp_path: Path) -> None:
    calibration = [np.zeros((1, 1, SIZE, SIZE), np.float32)]
    with pytest.raises(InputError, match="method"):
        quantize_int8(trained[1], tmp_path / "int8.onnx", calibration, method="kl")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not found"):
        quantize_int8(tmp_path / "absent.onnx", tmp_path / "int8.onnx", calibration)


def test_calibration_reader_yields_each_batch_as_float32_then_stops() -> None:
    batches = [np.full((2, 1, 4, 4), value, dtype=np.float64) for value in (1.0, 2.0)]
    reader = ArrayCalibrationReader("image", batches)
    first, second = reader.get_next(), reader.get_next()
    assert first is not None
    assert second is not None
    assert first["image"].dtype == np.float32
    assert float(second["image"][0, 0, 0, 0]) == 2.0
    assert reader.get_next() is None


def test_gate_passes_a_half_point_drop() -> None:
    result = check_gate(gate("AUC", 0.935, 0.930))
    assert result.passed
    assert result.drop_points == pytest.approx(0.5)
    assert result.threshold_points == 1.0


def test_gate_passes_a_drop_equal_to_the_limit_and_an_improvement() -> None:
    assert gate("Dice", 0.935, 0.925).passed
    assert gate("Dice", 0.80, 0.81).drop_points == pytest.approx(-1.0)
    assert gate("Dice", 0.80, 0.81).passed


def test_gate_refuses_a_two_point_drop_naming_the_metric_and_both_values() -> None:
    result = gate("AUC", 0.935, 0.915)
    assert not result.passed
    message = "INT8 AUC 0.915 is 2.0 points below FP32 0.935; the limit is 1.0 point: not written."
    with pytest.raises(QuantizationRefused, match=re.escape(message)) as refused:
        check_gate(result)
    assert "--method percentile" in str(refused.value)
    assert isinstance(refused.value, InputError)
    assert refused.value.gate == result


def test_gate_is_frozen_and_checks_its_inputs() -> None:
    result = gate("AUC", 0.9, 0.9, threshold_points=0.5)
    with pytest.raises(ValueError, match="frozen"):
        result.passed = False
    assert AccuracyGate.model_validate_json(result.model_dump_json()) == result
    with pytest.raises(InputError, match=r"AUC int8_value: expected a fraction in \[0, 1\], found 91.5"):
        gate("AUC", 0.935, 91.5)
    with pytest.raises(InputError, match="threshold_points"):
        gate("AUC", 0.9, 0.9, threshold_points=-1.0)
