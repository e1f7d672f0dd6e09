"""``vesalius bench MODEL``: the package's network at one input size through each backend, one process, same
input, warm-up excluded; torch FP32 is the baseline every other row is compared with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vesalius.core.errors import InputError
from vesalius.deploy.bench import LatencyReport, measure_latency, onnx_runner
from vesalius.deploy.runtime import INT8_FILE, ONNX_FILE
from vesalius.engines.common.manifest import load_manifest

BACKENDS = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8")

__all__ = ["BACKENDS", "bench_package", "planned_input_size"]


def planned_input_size(task: str, plan: dict[str, object]) -> list[int]:
    """The size a package's network sees: a classifier's input size, a segmenter's patch."""
    size = plan.get("input_size") if task == "classification" else plan.get("patch_size")
    if not isinstance(size, list):
        raise InputError(f"the package's plan has no {'input_size' if task == 'classification' else 'patch_size'}")
    return [int(s) for s in size]


def _channels(task: str, plan: dict[str, object]) -> int:
    if task == "classification":
        network = plan.get("network")
        return int(network.get("in_channels", 1)) if isinstance(network, dict) else 1
    modalities = plan.get("modalities")
    return len(modalities) if isinstance(modalities, list) else 1


def _torch_runner(folder: Path, image: np.ndarray, bf16: bool, threads: int | None) -> Callable[[], object]:
    import torch

    from vesalius.deploy.bench import torch_runner
    from vesalius.deploy.onnx import package_network

    if threads is not None:
        torch.set_num_threads(threads)
    network = package_network(folder)
    return torch_runner(network, torch.from_numpy(image), torch.bfloat16 if bf16 else None)


def bench_package(
    package_dir: Path | str,
    backends: Sequence[str] = BACKENDS,
    *,
    input_size: Sequence[int] | None = None,
    batch: int = 1,
    runs: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> list[LatencyReport]:
    """Latency of each backend the package can run (ONNX rows need ``model.onnx`` / ``model.int8.onnx``)."""
    folder = Path(package_dir)
    manifest = load_manifest(folder)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise InputError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    size = list(input_size) if input_size else planned_input_size(manifest.task, manifest.plan)
    shape = [batch, _channels(manifest.task, manifest.plan), *size]
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    reports = []
    for backend in backends:
        if backend.startswith("torch"):
            run = _torch_runner(folder, image, backend == "torch-bf16", threads)
        else:
            graph = INT8_FILE if backend.endswith("int8") else ONNX_FILE
            if graph not in manifest.files:
                raise InputError(f"{folder}: backend {backend} needs {graph} in the package (vesalius export/quantize)")
            run = onnx_runner(folder / graph, image, threads=threads)
        reports.append(
            measure_latency(run, items_per_run=batch, warmup=warmup, runs=runs, backend=backend, input_shape=shape,
                            threads=threads)
        )  # fmt: skip
    return reports
