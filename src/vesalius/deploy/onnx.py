"""ONNX export of a model package: the network as ``model.onnx``, checked against torch, added to the package.

The graph takes ``image`` (N, C, *spatial) float32 and returns ``logits`` (N, K, ...) with the batch and
spatial axes dynamic, so one file serves any batch size and, for CNNs, any image size (a DynUNet needs each
axis divisible by its total stride; a ViT keeps its planned size). DynUNet exports its eval-mode output only,
without the deep-supervision heads.

The torch.export-based exporter (``dynamo=True``) is tried first; when it fails, or its graph does not give
the torch logits at every checked shape, the TorchScript exporter is tried. The graph is kept only when
ONNX Runtime reproduces the torch logits within ``tolerance`` on every checked shape, batch 2 included.
Adding the file re-saves the package (``resave_package``) with the same weights and manifest fields, so
``package.json`` lists ``model.onnx`` with its SHA-256 and ``verify_package`` passes.
"""

from __future__ import annotations

import io
import math
import tempfile
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from pydantic import BaseModel, ConfigDict

from vesalius.core.errors import InputError
from vesalius.engines.classification.networks import ClassificationNetwork
from vesalius.engines.classification.plan import ClassificationPlan
from vesalius.engines.common.package import ModelPackage, load_package, resave_package
from vesalius.engines.common.plan import SegmentationPlan

ONNX_FILE = "model.onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
DEFAULT_TOLERANCE = 1e-3
Exporter = Literal["dynamo", "torchscript"]

__all__ = ["ONNX_FILE", "CheckedInput", "ExportReport", "export_onnx", "package_network"]


class CheckedInput(BaseModel):
    """One input the exported graph was run on, and how far its logits were from torch's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: list[int]
    max_abs_diff: float


class ExportReport(BaseModel):
    """What ``export_onnx`` wrote and how closely ONNX Runtime reproduced the torch network."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    opset: int
    exporter: Exporter
    max_abs_diff: float
    tolerance: float
    inputs: list[CheckedInput]
    size_bytes: int

    @property
    def input_shapes(self) -> list[list[int]]:
        return [checked.shape for checked in self.inputs]


def _network(package: ModelPackage) -> tuple[torch.nn.Module, list[list[int]], bool]:
    """The package's network in eval mode, the default shapes to check, and whether spatial axes may vary."""
    task, plan = package.manifest.task, package.manifest.plan
    if task == "classification":
        spec = ClassificationPlan.model_validate(plan).network
        network: torch.nn.Module = ClassificationNetwork.build(spec)
        size = list(spec.input_size)
        shapes = [[1, spec.in_channels, *size], [2, spec.in_channels, *size]]
        resizable = spec.architecture != "vit"  # a ViT's position embedding fixes its input size
        if resizable:
            shapes.append([1, spec.in_channels, *[s + max(8, s // 2) + axis for axis, s in enumerate(size)]])
    elif task == "segmentation":
        segmentation = SegmentationPlan.model_validate(plan)
        network = segmentation.network.build()
        patch, divisor, channels = (
            list(segmentation.patch_size),
            segmentation.network.divisor,
            segmentation.network.in_channels,
        )
        shapes = [[1, channels, *patch], [2, channels, *patch]]
        shapes.append(
            [1, channels, *[p + d * (axis + 1) for axis, (p, d) in enumerate(zip(patch, divisor, strict=True))]]
        )
        resizable = True
    else:
        raise InputError(f"{package.folder}: a {task} package; ONNX export supports classification and segmentation")
    network.load_state_dict(package.state_dict())  # float16 weights are cast to the network's float32
    return network.float().eval(), shapes, resizable


def package_network(package_dir: Path | str) -> torch.nn.Module:
    """The torch network of a classification or segmentation package, weights loaded, eval mode, float32."""
    return _network(load_package(package_dir))[0]


def _export(
    network: torch.nn.Module, example: torch.Tensor, target: Path, opset: int, exporter: Exporter, resizable: bool
) -> None:
    axes = [0, *range(2, example.ndim)] if resizable else [0]
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {axis: torch.export.Dim.AUTO for axis in axes}
            torch.onnx.export(
                network,
                (example,),
                str(target),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                external_data=False,
                optimize=True,
                verbose=False,
            )
        else:
            names = {axis: ("batch" if axis == 0 else f"spatial_{axis - 2}") for axis in axes}
            torch.onnx.export(
                network,
                (example,),
                str(target),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: names, OUTPUT_NAME: names},
            )


def _check(network: torch.nn.Module, path: Path, shapes: Sequence[Sequence[int]]) -> list[CheckedInput]:
    """Run torch and ONNX Runtime on the same seeded inputs; the largest absolute logit difference per input."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    checked: list[CheckedInput] = []
    for shape in shapes:
        image: npt.NDArray[np.float32] = rng.standard_normal(tuple(shape)).astype(np.float32)
        with torch.inference_mode():
            expected = network(torch.from_numpy(image)).float().numpy()
        found = np.asarray(session.run(None, {name: image})[0])
        if found.shape != expected.shape:
            raise InputError(
                f"{path}: input {list(shape)} gave logits {list(found.shape)}, torch {list(expected.shape)}"
            )
        difference = float(np.abs(found - expected).max()) if found.size else 0.0
        checked.append(CheckedInput(shape=[int(s) for s in shape], max_abs_diff=difference))
    return checked


def _try_exporters(
    network: torch.nn.Module,
    shapes: Sequence[Sequence[int]],
    target: Path,
    opset: int,
    tolerance: float,
    exporters: Sequence[Exporter],
    resizable: bool,
) -> tuple[Exporter, list[CheckedInput]]:
    """The first exporter whose graph reproduces torch within ``tolerance`` on every shape."""
    example = torch.zeros((2, *shapes[0][1:]), dtype=torch.float32)  # batch 2: an axis of size 1 would be fixed
    problems: list[str] = []
    for exporter in exporters:
        try:
            _export(network, example, target, opset, exporter, resizable)
            checked = _check(network, target, shapes)
        except Exception as error:  # exporters and ONNX Runtime raise many types; the reasons are reported below
            problems.append(f"{exporter}: {type(error).__name__}: {str(error).strip().splitlines()[0][:300]}")
            continue
        worst = max(c.max_abs_diff for c in checked)
        if math.isfinite(worst) and worst <= tolerance:
            return exporter, checked
        details = ", ".join(f"{c.shape}: {c.max_abs_diff:.3g}" for c in checked)
        problems.append(
            f"{exporter}: logits differ from torch by up to {worst:.3g} > tolerance {tolerance:g} ({details})"
        )
    raise InputError("ONNX export failed: " + "; ".join(problems))


def export_onnx(
    package_dir: Path | str,
    *,
    opset: int = 18,
    check_inputs: Sequence[Sequence[int]] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    exporters: Sequence[Exporter] = ("dynamo", "torchscript"),
) -> ExportReport:
    """Export the package's network to ``model.onnx`` inside the package and list it in ``package.json``.

    ``check_inputs`` are input shapes (N, C, *spatial) run through torch and ONNX Runtime on seeded random
    values; by default the planned size at batch 1 and 2 and one larger size where the network allows it.
    The package is left as it was when no exporter reproduces torch within ``tolerance``.
    """
    folder = Path(package_dir)
    package = load_package(folder)
    network, default_shapes, resizable = _network(package)
    shapes = [list(shape) for shape in (check_inputs if check_inputs is not None else default_shapes)]
    if not shapes or any(len(shape) != len(default_shapes[0]) or min(shape) < 1 for shape in shapes):
        raise InputError(f"check_inputs must be shapes like {default_shapes[0]} (N, C, *spatial); got {shapes}")
    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=folder) as scratch:
        exported = Path(scratch) / ONNX_FILE
        exporter, checked = _try_exporters(network, shapes, exported, opset, tolerance, exporters, resizable)
        resave_package(package, extra_files={ONNX_FILE: exported})
    path = folder / ONNX_FILE
    return ExportReport(
        path=path,
        opset=opset,
        exporter=exporter,
        max_abs_diff=max(c.max_abs_diff for c in checked),
        tolerance=tolerance,
        inputs=checked,
        size_bytes=path.stat().st_size,
    )
