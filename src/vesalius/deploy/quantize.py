"""Static INT8 quantisation of an ONNX network, calibrated on real inputs, behind an accuracy gate.

ONNX Runtime does the work (``quant_pre_process`` then ``quantize_static`` in QDQ format). Activation ranges
come from calibration arrays the caller prepares exactly as for inference (same window, normalisation,
spacing and patch size): ranges taken from random noise would clip real tissue intensities.

Defaults follow ORT's guidance for x86 CPUs with VNNI (Cascade Lake and later, Zen 4 and later): uint8
activations, int8 weights, per-channel weights, no range reduction. On older x86 CPUs without VNNI pass
``reduce_range=True`` (7-bit weights avoid saturating the 16-bit accumulators); on ARM, ``activations="int8"``.

A quantised network is only kept when the metric that matters clinically (AUC, Dice) drops by at most a
threshold: :func:`gate` records the comparison and :func:`check_gate` refuses with a message saying what to try.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from pydantic import BaseModel, ConfigDict

from vesalius.core.errors import InputError
from vesalius.engines.common.metrics.classification import binary_metrics, multiclass_metrics

Method = Literal["minmax", "percentile", "entropy"]
ActivationType = Literal["uint8", "int8"]

_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
_ACTIVATIONS: dict[str, QuantType] = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
_TOLERANCE_POINTS = 1e-9
"""A drop equal to the threshold passes even when float subtraction lands a hair above it."""

__all__ = [
    "AccuracyGate",
    "ArrayCalibrationReader",
    "QuantizationRefused",
    "check_gate",
    "classification_auc",
    "gate",
    "quantize_int8",
]


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds ORT's calibrator one batch at a time from arrays prepared exactly as for inference.

    Floating arrays are passed as contiguous float32, the type the exported network takes.
    """

    def __init__(self, input_name: str, batches: Iterable[npt.NDArray[Any]]) -> None:
        self.input_name = input_name
        self._batches: Iterator[npt.NDArray[Any]] = iter(batches)

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        array = np.asarray(batch)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32, copy=False)
        return {self.input_name: np.ascontiguousarray(array)}


def _single_input(model_path: Path) -> tuple[str, int]:
    """Name and rank of the network's one input (initialisers listed as inputs by old exporters excluded)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = [value.name for value in inputs]
        raise InputError(f"{model_path}: expected a network with one input to calibrate, found {len(inputs)}: {names}")
    return inputs[0].name, len(inputs[0].type.tensor_type.shape.dim)


def _check_calibration(model_path: Path, rank: int, calibration: Sequence[npt.NDArray[Any]]) -> None:
    if len(calibration) == 0:
        raise InputError(
            f"{model_path}: the calibration set is empty; INT8 activation ranges need real inputs "
            "prepared as for inference (a few dozen cases or patches)"
        )
    for index, batch in enumerate(calibration):
        array = np.asarray(batch)
        if array.ndim != rank or array.size == 0:
            raise InputError(
                f"{model_path}: calibration batch {index} has shape {array.shape}; expected a non-empty "
                f"{rank}-D batch (batch, channels, spatial...) as the network's input"
            )
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise InputError(f"{model_path}: calibration batch {index} holds nan or infinite values")


def _pre_process(source: Path, target: Path) -> None:
    """ORT's optimisation and shape inference before quantisation (a tensor of unknown shape is not quantised).

    The model is first saved as one file (networks here are far below ONNX's 2 GB limit), so the scratch
    copies ORT makes never point at a weights file left behind. ORT's symbolic shape inference is skipped: it
    is written for transformers, fails on graphs of the torch.export exporter (ReduceMax with axes as an input)
    and then saves its partial model into the working directory; ONNX's own inference covers these networks.
    """
    whole = target.with_name("whole.onnx")
    onnx.save(onnx.load(str(source)), str(whole))  # weights inline: torch.export may write them to model.onnx.data
    quant_pre_process(str(whole), str(target), skip_symbolic_shape=True)


def quantize_int8(
    fp32_onnx: Path,
    int8_onnx: Path,
    calibration: Sequence[npt.NDArray[Any]],
    *,
    per_channel: bool = True,
    method: Method = "minmax",
    activations: ActivationType = "uint8",
    reduce_range: bool = False,
) -> Path:
    """Write ``int8_onnx``: ``fp32_onnx`` shape-inferred, optimised and statically quantised (QDQ, int8 weights).

    ``calibration`` holds batches of preprocessed inputs; ``method`` picks how activation ranges are set from
    them ("percentile" ignores rare outliers, often better for CT). The file appears only when quantisation
    succeeded, so an interrupted run never leaves a half-written model behind. ORT holds every calibration
    batch's activations in memory before computing ranges (its ``CalibMaxIntermediateOutputs`` would bound
    that, but ORT 1.32 drops the batches it flushes), so keep the set to tens of patches, not whole CTs.
    """
    fp32_onnx, int8_onnx = Path(fp32_onnx), Path(int8_onnx)
    if not fp32_onnx.is_file():
        raise InputError(f"{fp32_onnx}: ONNX model not found")
    if method not in _METHODS:
        raise InputError(f"method: expected one of {sorted(_METHODS)}, found {method!r}")
    if activations not in _ACTIVATIONS:
        raise InputError(f"activations: expected one of {sorted(_ACTIVATIONS)}, found {activations!r}")
    input_name, rank = _single_input(fp32_onnx)
    _check_calibration(fp32_onnx, rank, calibration)
    with tempfile.TemporaryDirectory(prefix="vesalius-quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        written = Path(scratch) / "int8.onnx"
        _pre_process(fp32_onnx, prepared)
        quantize_static(
            str(prepared),
            str(written),
            ArrayCalibrationReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=_ACTIVATIONS[activations],
            weight_type=QuantType.QInt8,
            calibrate_method=_METHODS[method],
        )
        int8_onnx.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written, int8_onnx)
    return int8_onnx


class AccuracyGate(BaseModel):
    """FP32 against INT8 on one higher-is-better metric in [0, 1]; ``drop_points`` is (fp32 - int8) x 100."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    fp32_value: float
    int8_value: float
    drop_points: float
    threshold_points: float = 1.0
    passed: bool

    def describe(self) -> str:
        """One line a user reads: the metric, both values, the drop and the limit."""
        unit = "point" if self.threshold_points == 1 else "points"
        direction = "below" if self.drop_points >= 0 else "above"
        change = f"{abs(self.drop_points):.1f} points {direction}"
        return (
            f"INT8 {self.metric} {self.int8_value:.3f} is {change} FP32 {self.fp32_value:.3f}; "
            f"the limit is {self.threshold_points:.1f} {unit}"
        )


class QuantizationRefused(InputError):  # noqa: N818 - the name says what happened to the user's request
    """The INT8 network lost more accuracy than allowed, so it is not written."""

    def __init__(self, result: AccuracyGate) -> None:
        self.gate = result
        super().__init__(
            f"{result.describe()}: not written. Use more calibration data, --method percentile, or keep FP32."
        )


def gate(metric_name: str, fp32_value: float, int8_value: float, threshold_points: float = 1.0) -> AccuracyGate:
    """Compare the INT8 network's metric with the FP32 one; passes when it drops by at most ``threshold_points``."""
    for field, value in (("fp32_value", fp32_value), ("int8_value", int8_value)):
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InputError(f"{metric_name} {field}: expected a fraction in [0, 1], found {value}")
    if not (math.isfinite(threshold_points) and threshold_points >= 0):
        raise InputError(f"threshold_points: expected a non-negative number of points, found {threshold_points}")
    drop = (fp32_value - int8_value) * 100.0
    return AccuracyGate(
        metric=metric_name,
        fp32_value=fp32_value,
        int8_value=int8_value,
        drop_points=drop,
        threshold_points=threshold_points,
        passed=drop <= threshold_points + _TOLERANCE_POINTS,
    )


def check_gate(result: AccuracyGate) -> AccuracyGate:
    """Return the gate when it passed; raise :class:`QuantizationRefused` otherwise."""
    if not result.passed:
        raise QuantizationRefused(result)
    return result


def _session(session_or_path: ort.InferenceSession | Path | str) -> ort.InferenceSession:
    if isinstance(session_or_path, ort.InferenceSession):
        return session_or_path
    return ort.InferenceSession(str(session_or_path), providers=["CPUExecutionProvider"])


def classification_auc(
    session_or_path: ort.InferenceSession | Path | str,
    images: npt.NDArray[Any],
    labels: npt.NDArray[Any],
    *,
    batch_size: int = 16,
) -> float:
    """AUC of a classifier's logits on preprocessed ``images`` (N, C, ...) with integer ``labels`` (N,).

    One or two outputs: binary AUC of the positive score; more: macro one-vs-rest AUC of the softmax.
    Computed by the same functions as training-time evaluation, so the gate compares like with like.
    """
    y = np.asarray(labels).astype(np.int64)
    if y.ndim != 1 or y.shape[0] != len(images):
        raise InputError(f"labels: expected shape ({len(images)},) of class indices, found {np.shape(labels)}")
    session = _session(session_or_path)
    name = session.get_inputs()[0].name
    chunks = [
        np.asarray(session.run(None, {name: np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)})[0])
        for i in range(0, len(images), batch_size)
    ]
    logits = np.concatenate(chunks).astype(np.float64).reshape(len(images), -1)
    if logits.shape[1] <= 2:
        return binary_metrics()["auc"](y, logits[:, -1] - (logits[:, 0] if logits.shape[1] == 2 else 0.0))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return multiclass_metrics([str(k) for k in range(logits.shape[1])])["auc"](y, probabilities)
