"""Latency measurement: warm-up excluded, ordered percentiles, throughput from the mean, tables and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vesalius.core.errors import InputError
from vesalius.deploy.bench import (
    LatencyReport,
    latency_table,
    measure_latency,
    onnx_runner,
    read_reports_json,
    torch_runner,
    write_reports_json,
)


class Counter:
    """A run whose calls are counted."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return sum(range(200))


def _report(backend: str, mean_ms: float) -> LatencyReport:
    return LatencyReport(
        backend=backend,
        input_shape=(1, 1, 8, 8),
        batch=4,
        warmup=1,
        runs=5,
        p50_ms=mean_ms,
        p95_ms=mean_ms * 1.5,
        mean_ms=mean_ms,
        throughput_per_s=4000.0 / mean_ms,
        peak_rss_mb=None,
        threads=2,
    )


def test_runs_warmup_plus_runs_times_and_reports_only_the_timed_runs() -> None:
    counter = Counter()
    report = measure_latency(counter, items_per_run=4, warmup=3, runs=7, backend="count", input_shape=(4, 1, 8, 8))
    assert counter.calls == 10
    assert (report.warmup, report.runs, report.batch) == (3, 7, 4)
    assert report.input_shape == (4, 1, 8, 8)


class FakeClock:
    """``time.perf_counter`` stand-in: each run advances it by a known cost, so the figures have exact answers."""

    def __init__(self, costs_s: list[float]) -> None:
        self.now = 100.0
        self.costs_s = costs_s
        self.calls = 0

    def perf_counter(self) -> float:
        return self.now

    def run(self) -> None:
        self.now += self.costs_s[self.calls]
        self.calls += 1


def test_warmup_is_excluded_and_figures_come_from_the_timed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first two calls are slow, as first inferences are; as warm-up they must not reach any figure."""
    clock = FakeClock([5.0, 3.0] + [0.001 * k for k in range(1, 11)])
    monkeypatch.setattr(time, "perf_counter", clock.perf_counter)
    report = measure_latency(clock.run, items_per_run=2, warmup=2, runs=10, backend="fake", input_shape=(2, 1))
    assert clock.calls == 12
    assert report.mean_ms == pytest.approx(5.5)
    assert report.p50_ms == pytest.approx(5.5)
    assert report.p95_ms == pytest.approx(9.55)
    assert report.throughput_per_s == pytest.approx(2 / 0.0055)


def test_percentiles_are_ordered_and_throughput_is_items_over_mean() -> None:
    report = measure_latency(Counter(), items_per_run=8, warmup=0, runs=25, backend="count", input_shape=(8,))
    assert 0 < report.p50_ms <= report.p95_ms
    assert report.mean_ms > 0
    assert report.throughput_per_s == pytest.approx(8 / (report.mean_ms / 1000.0))
    assert report.peak_rss_mb is None or report.peak_rss_mb >= 0


def _can_reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


PEAK_CHILD = """
import numpy as np
from vesalius.deploy.bench import measure_latency
held = []
report = measure_latency(lambda: held.append(np.ones(1024 * 1024)), items_per_run=1, warmup=0, runs=5,
                         backend="alloc", input_shape=(1,))
print(report.peak_rss_mb)
"""


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_peak_rss_sees_memory_allocated_during_the_runs() -> None:
    """Five 8 MB arrays kept: at least 30 MB of growth. A fresh process, so no freed heap is reused."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    if done.stdout.strip() == "None":
        pytest.skip("this system gives no peak resident set")
    assert float(done.stdout.strip()) >= 30.0


@pytest.mark.parametrize(("runs", "warmup", "items"), [(0, 1, 1), (1, -1, 1), (1, 1, 0)])
def test_impossible_counts_are_refused(runs: int, warmup: int, items: int) -> None:
    with pytest.raises(InputError, match="measure_latency"):
        measure_latency(Counter(), items_per_run=items, warmup=warmup, runs=runs, backend="x", input_shape=(1,))


def _tiny_onnx(path: Path) -> Path:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return path


def test_onnx_runner_runs_the_model_on_its_input(tmp_path: Path) -> None:
    run = onnx_runner(_tiny_onnx(tmp_path / "tiny.onnx"), np.zeros((3, 1, 8, 8), np.float32), threads=1)
    outputs = run()
    assert isinstance(outputs, list)
    assert outputs[0].shape == (3, 2, 8, 8)
    report = measure_latency(run, items_per_run=3, warmup=1, runs=3, backend="ort", input_shape=(3, 1, 8, 8), threads=1)
    assert report.threads == 1
    assert report.p50_ms > 0


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_torch_runner_runs_without_autograd_and_in_the_asked_precision(dtype: torch.dtype | None) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    output = torch_runner(model, torch.randn(2, 1, 8, 8), dtype=dtype)()
    assert isinstance(output, torch.Tensor)
    assert output.shape == (2, 2, 8, 8)
    assert not output.requires_grad
    assert output.dtype == (dtype or torch.float32)
    assert not model.training


def test_bench_imports_without_torch() -> None:
    code = "import sys, vesalius.deploy.bench; print('torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "False"


def test_table_has_a_row_per_report_and_the_ratio_to_the_first() -> None:
    reports = [_report("torch-fp32", 20.0), _report("ort-int8", 5.0)]
    table = latency_table(reports)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(reports)
    assert lines[0].startswith("| backend |")
    assert "| torch-fp32 | 1x1x8x8 | 4 | 2 | 20.00 | 30.00 | 20.00 | 200.0 | n/a | 1.00x |" in lines
    assert "| ort-int8 | 1x1x8x8 | 4 | 2 | 5.00 | 7.50 | 5.00 | 800.0 | n/a | 4.00x |" in lines


def test_json_holds_every_report_and_reads_back(tmp_path: Path) -> None:
    reports = [_report("torch-fp32", 20.0), _report("ort-int8", 5.0)]
    path = write_reports_json(tmp_path / "results" / "latency.json", reports)
    payload = json.loads(path.read_text())
    assert [entry["backend"] for entry in payload["reports"]] == ["torch-fp32", "ort-int8"]
    assert read_reports_json(path) == reports


def test_a_file_that_is_not_a_report_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"something": []}')
    with pytest.raises(InputError, match=r"other\.json"):
        read_reports_json(path)
