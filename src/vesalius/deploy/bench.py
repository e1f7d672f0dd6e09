"""Latency of one forward pass, measured the same way for every backend so their figures can be compared.

:func:`measure_latency` times any zero-argument callable: warm-up runs first (first-call allocation, kernel
selection and caches would otherwise inflate the tail), then timed runs with ``time.perf_counter``. Runners
wrap an ONNX Runtime session (:func:`onnx_runner`) or a torch module (:func:`torch_runner`, FP32 or bf16
autocast) around a fixed input, so the runs time the network and not the preprocessing. This module imports
without torch; only :func:`torch_runner` needs it.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, TypeAdapter

from vesalius.core.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "LatencyReport",
    "latency_table",
    "measure_latency",
    "onnx_runner",
    "read_reports_json",
    "torch_runner",
    "write_reports_json",
]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class LatencyReport(BaseModel):
    """One backend's latency on one input shape; ``batch`` items are processed per run.

    ``peak_rss_mb`` is how far the process's resident set rose above its level at the start of the timed
    runs (``None`` where the platform cannot tell): the memory the runs themselves need.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    input_shape: tuple[int, ...]
    batch: int
    warmup: int
    runs: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    throughput_per_s: float
    peak_rss_mb: float | None
    threads: int | None


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _maxrss_kb() -> int:
    """Peak resident set of the process so far; Linux reports kB, macOS bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


class _PeakMemory:
    """Peak resident set growth over a stretch of code.

    Writing "5" to ``/proc/self/clear_refs`` resets the high-water mark VmHWM to the current RSS, so VmHWM
    read afterwards is the true peak of that stretch. Where that is refused, ``getrusage`` gives the peak of
    the whole process, which only shows growth beyond every earlier peak: a lower bound.
    """

    def __init__(self) -> None:
        self._reset = False
        self._start_kb: int | None = None
        self._rusage_start_kb = 0

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        self._start_kb = _status_kb("VmRSS") if self._reset else None
        self._rusage_start_kb = _maxrss_kb()

    def growth_mb(self) -> float | None:
        peak = _status_kb("VmHWM") if self._reset else None
        if peak is not None and self._start_kb is not None:
            return max(peak - self._start_kb, 0) / 1024.0
        try:
            return max(_maxrss_kb() - self._rusage_start_kb, 0) / 1024.0
        except (OSError, ValueError):
            return None


def measure_latency(
    run: Callable[[], object],
    *,
    items_per_run: int,
    warmup: int = 3,
    runs: int = 20,
    backend: str,
    input_shape: Sequence[int],
    threads: int | None = None,
) -> LatencyReport:
    """Call ``run`` ``warmup`` times untimed, then ``runs`` times timed; percentiles and mean over the timed runs.

    ``items_per_run`` is the batch (images or patches) one call processes; throughput is items per second
    of mean latency.
    """
    if runs < 1 or warmup < 0 or items_per_run < 1:
        raise InputError(
            f"measure_latency: expected runs >= 1, warmup >= 0 and items_per_run >= 1, "
            f"found runs={runs}, warmup={warmup}, items_per_run={items_per_run}"
        )
    for _ in range(warmup):
        run()
    memory = _PeakMemory()
    memory.start()
    seconds = np.empty(runs, dtype=np.float64)
    for index in range(runs):
        start = time.perf_counter()
        run()
        seconds[index] = time.perf_counter() - start
    peak = memory.growth_mb()
    milliseconds = seconds * 1000.0
    p50, p95 = (float(value) for value in np.percentile(milliseconds, [50, 95]))
    mean_ms = float(milliseconds.mean())
    return LatencyReport(
        backend=backend,
        input_shape=tuple(int(size) for size in input_shape),
        batch=items_per_run,
        warmup=warmup,
        runs=runs,
        p50_ms=p50,
        p95_ms=p95,
        mean_ms=mean_ms,
        throughput_per_s=items_per_run / (mean_ms / 1000.0) if mean_ms > 0 else math.inf,
        peak_rss_mb=peak,
        threads=threads,
    )


def onnx_runner(
    path: Path | str,
    input_array: npt.NDArray[Any],
    threads: int | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Callable[[], object]:
    """A call that runs the ONNX model at ``path`` once on ``input_array`` (its only input).

    ``threads`` sets ONNX Runtime's intra-op pool (None: ORT's default, one per physical core).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads: expected >= 1, found {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"{path}: expected a model with one input, found {[node.name for node in inputs]}")
    feed = {inputs[0].name: np.ascontiguousarray(input_array)}

    def run() -> object:
        return session.run(None, feed)

    return run


def torch_runner(
    module: torch.nn.Module, input_tensor: torch.Tensor, dtype: torch.dtype | None = None
) -> Callable[[], object]:
    """A call that runs ``module`` once on ``input_tensor`` without autograd; ``dtype`` (e.g. torch.bfloat16)
    runs it under autocast on the tensor's device. CUDA calls wait for the device, so the time is the work's."""
    import torch

    module.eval()
    device = input_tensor.device.type
    mixed = dtype is not None and dtype != torch.float32

    def run() -> object:
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype, enabled=mixed):
            output = module(input_tensor)
        if device == "cuda":
            torch.cuda.synchronize()
        return output

    return run


def _cell(value: float | None, digits: int, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def latency_table(reports: Sequence[LatencyReport]) -> str:
    """A markdown table, one row per report; "vs first" is the first row's mean latency over this row's."""
    header = (
        "| backend | input shape | batch | threads | p50 ms | p95 ms | mean ms | items/s | peak RSS MB | vs first |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [header]
    reference = reports[0].mean_ms if reports else 0.0
    for report in reports:
        speedup = reference / report.mean_ms if report.mean_ms > 0 else None
        shape = "x".join(str(size) for size in report.input_shape)
        rows.append(
            f"| {report.backend} | {shape} | {report.batch} | {report.threads if report.threads is not None else 'n/a'}"
            f" | {report.p50_ms:.2f} | {report.p95_ms:.2f} | {report.mean_ms:.2f} | {report.throughput_per_s:.1f}"
            f" | {_cell(report.peak_rss_mb, 1)} | {_cell(speedup, 2, 'x')} |"
        )
    return "\n".join(rows) + "\n"


_REPORTS = TypeAdapter(list[LatencyReport])


def write_reports_json(path: Path | str, reports: Sequence[LatencyReport]) -> Path:
    """``{"reports": [...]}``, one object per report, for ``benchmarks/results``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"reports": [report.model_dump(mode="json") for report in reports]}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def read_reports_json(path: Path | str) -> list[LatencyReport]:
    """The reports :func:`write_reports_json` wrote."""
    path = Path(path)
    try:
        return _REPORTS.validate_python(json.loads(path.read_text())["reports"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: expected a latency report file with a 'reports' list: {error}") from error
