"""Prediction with ONNX Runtime alone: a package's ``model.onnx`` run where torch is not installed.

Nothing imported here imports torch (a test blocks it), so a deployment needs numpy, scipy, pydantic and
onnxruntime only. Each class predicts as its torch engine does, with the same helpers where they are
torch-free and a numpy twin where they are not:

- :class:`OnnxClassifier` as ``engines.classification.engine.Classifier``: the same image preparation,
  flip TTA (logits averaged over the plan's flipped copies), temperature, operating point and labels;
- :class:`OnnxSegmenter` as ``engines.segmentation.predict.Predictor`` with one fold: the same preprocessing,
  Gaussian-weighted sliding window with mirror TTA (window starts, weights and mirror sets from
  ``engines.segmentation.windows``), softmax, sampling back to the input grid with
  ``vesalius.transforms.invert``, argmax and largest-component post-processing.

The package is verified (every hash) before the graph is opened, and the graph is built from the very bytes
whose hash was checked.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from vesalius.core.errors import InputError, PackageIntegrityError
from vesalius.core.volume import Volume
from vesalius.engines.classification.dataset import ImageSource
from vesalius.engines.classification.images import prepare_images
from vesalius.engines.classification.plan import ClassificationPlan, predicted_label
from vesalius.engines.common.calibration import apply_temperature
from vesalius.engines.common.manifest import PackageManifest, load_manifest
from vesalius.engines.common.plan import SegmentationPlan
from vesalius.engines.segmentation.postprocess import channels_first, input_grid_labels, to_input_grid
from vesalius.engines.segmentation.preprocess import preprocess_image
from vesalius.engines.segmentation.windows import gaussian_weights, mirror_sets, window_starts

ONNX_FILE = "model.onnx"  # the name ``vesalius.deploy.onnx`` writes (not imported: that module imports torch)
INT8_FILE = "model.int8.onnx"  # the name ``vesalius.deploy.quantize`` adds once the accuracy gate passes

__all__ = ["INT8_FILE", "ONNX_FILE", "OnnxClassifier", "OnnxModel", "OnnxSegmenter"]


class OnnxModel:
    """A verified package and an ONNX Runtime session on its ``model.onnx``.

    ``providers`` defaults to what this ONNX Runtime build offers (CUDA first where present); ``threads`` sets
    the intra-op thread count (None: ONNX Runtime's choice, one per physical core). ``graph`` picks the FP32
    ``model.onnx`` or the quantised ``model.int8.onnx``.
    """

    def __init__(
        self,
        package_dir: Path | str,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        graph: str = ONNX_FILE,
    ) -> None:
        self.folder = Path(package_dir)
        self.manifest: PackageManifest = load_manifest(self.folder)
        if graph not in self.manifest.files:
            command = "quantize --int8 --calibration DATA" if graph == INT8_FILE else "export --onnx"
            raise InputError(
                f"{self.folder}: the package has no {graph} (it lists {', '.join(sorted(self.manifest.files))}); "
                f"run `vesalius {command.split()[0]} {self.folder} {' '.join(command.split()[1:])}` to add it"
            )
        data = (self.folder / graph).read_bytes()
        found = "sha256:" + hashlib.sha256(data).hexdigest()
        if found != self.manifest.files[graph]:  # changed since load_manifest read it
            raise PackageIntegrityError(
                self.folder, [f"{graph} changed: expected {self.manifest.files[graph]}, found {found}"]
            )
        self.graph = graph
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise InputError(f"threads must be >= 1; got {threads}")
            options.intra_op_num_threads = threads
        chosen = list(providers) if providers is not None else ort.get_available_providers()
        self.session = ort.InferenceSession(data, sess_options=options, providers=chosen)
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The network's output for a float32 batch (N, C, *spatial)."""
        batch = np.ascontiguousarray(images, dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: batch})[0], dtype=np.float32)


def _softmax(values: npt.NDArray[Any], axis: int) -> npt.NDArray[Any]:
    shifted = values - values.max(axis=axis, keepdims=True)
    exponent = np.exp(shifted)
    result: npt.NDArray[Any] = exponent / exponent.sum(axis=axis, keepdims=True)
    return result


def _sigmoid(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * values))  # no overflow for large |x|
    return result


def main_probabilities(plan: ClassificationPlan, logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """numpy twin of ``classification.trainer.main_probabilities``: class probabilities (N, K) of any task kind."""
    values = np.asarray(logits, dtype=np.float64)
    if plan.kind in ("binary", "multiclass"):
        return _softmax(values, axis=1)
    if plan.kind == "multilabel":
        return _sigmoid(values)
    above = np.minimum.accumulate(_sigmoid(values), axis=1)  # P(grade > k), made non-increasing
    ones, zeros = np.ones((len(values), 1)), np.zeros((len(values), 1))
    cumulative = np.concatenate([ones, above, zeros], axis=1)
    result: npt.NDArray[np.float64] = cumulative[:, :-1] - cumulative[:, 1:]
    return result


class OnnxClassifier(OnnxModel):
    """A classification package run by ONNX Runtime: calibrated probabilities and labels as ``Classifier``."""

    def __init__(
        self,
        package_dir: Path | str,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batch_size: int = 64,
        graph: str = ONNX_FILE,
    ) -> None:
        super().__init__(package_dir, providers, threads, graph)
        if self.manifest.task != "classification":
            raise InputError(f"{package_dir}: a {self.manifest.task} package, not a classification one")
        self.plan = ClassificationPlan.model_validate(self.manifest.plan)
        self.temperature = float(self.manifest.postprocessing.get("temperature", 1.0))
        threshold = self.manifest.postprocessing.get("threshold")
        self.threshold = None if threshold is None else float(threshold)
        self.batch_size = batch_size

    def flip_axes(self) -> tuple[int, ...]:
        """The spatial axes TTA averages over (as ``trainer.tta_flip_axes``): the plan's flips when it asks."""
        return tuple(self.plan.augmentation.flip_axes) if self.plan.tta_flips else ()

    def main_logits(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(N, heads['main']) logits, averaged over the image and each singly flipped copy."""
        flips = self.flip_axes()
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            summed = self.logits(batch)
            for axis in flips:
                summed = summed + self.logits(np.flip(batch, axis + 2))
            parts.append(summed / np.float32(1 + len(flips)))
        return np.concatenate(parts).astype(np.float32)

    def probabilities(self, sources: Sequence[ImageSource]) -> npt.NDArray[Any]:
        """(N, classes): calibrated probabilities (per label for multi-label tasks)."""
        logits = self.main_logits(prepare_images(sources, self.plan))
        if self.plan.kind in ("binary", "multiclass"):
            return apply_temperature(logits, self.temperature)
        return main_probabilities(self.plan, logits)

    def label(self, row: npt.NDArray[Any]) -> str:
        """The predicted class: the operating point for binary tasks, labels at 0.5 for multi-label ones."""
        return predicted_label(self.plan, row, self.threshold)


class OnnxSegmenter(OnnxModel):
    """A segmentation package run by ONNX Runtime; label maps on exactly the input grid, as ``Predictor``."""

    def __init__(
        self,
        package_dir: Path | str,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        *,
        tta: bool = True,
        overlap: float = 0.5,
        gaussian: bool = True,
        batch_size: int = 1,
        postprocessing: Mapping[int, bool] | None = None,
        graph: str = ONNX_FILE,
    ) -> None:
        super().__init__(package_dir, providers, threads, graph)
        if self.manifest.task != "segmentation":
            raise InputError(f"{package_dir}: a {self.manifest.task} package, not a segmentation one")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1; got {batch_size}")
        self.plan = SegmentationPlan.model_validate(self.manifest.plan)
        self.tta, self.overlap, self.gaussian, self.batch_size = tta, overlap, gaussian, batch_size
        if postprocessing is None:
            recorded = self.manifest.postprocessing.get("keep_largest_component", [])
            postprocessing = {int(value): True for value in recorded}
        self.postprocessing = dict(postprocessing)

    def _mirrored_logits(self, patches: npt.NDArray[np.float32], combos: list[tuple[int, ...]]) -> npt.NDArray[Any]:
        total: npt.NDArray[np.float32] | None = None
        for combo in combos:
            dims = tuple(axis + 2 for axis in combo)
            logits = self.logits(np.flip(patches, dims) if dims else patches)
            logits = np.flip(logits, dims) if dims else logits
            total = logits.copy() if total is None else np.add(total, logits, out=total)
        assert total is not None
        total /= np.float32(len(combos))
        return total

    def sliding_window(self, image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Softmax probabilities (K, i, j, k) for a preprocessed image (C, i, j, k), as
        ``sliding_window_probabilities``: zero padding up to the patch, Gaussian blending, mirror TTA."""
        patch = tuple(int(p) for p in self.plan.patch_size)
        shape = image.shape[1:]
        before = [max(p - s, 0) // 2 for s, p in zip(shape, patch, strict=True)]
        after = [max(p - s, 0) - b for s, p, b in zip(shape, patch, before, strict=True)]
        image = np.pad(image, [(0, 0), *zip(before, after, strict=True)]) if any(before + after) else image
        padded = image.shape[1:]
        starts = [window_starts(s, p, self.overlap) for s, p in zip(padded, patch, strict=True)]
        axis_weights = [gaussian_weights(p, self.gaussian) for p in patch]
        blend = np.einsum("i,j,k->ijk", *axis_weights).astype(np.float32)
        combos = mirror_sets(self.plan.augmentation.mirror_axes if self.tta else ())
        windows = list(itertools.product(*starts))
        output: npt.NDArray[np.float32] | None = None
        for first in range(0, len(windows), self.batch_size):
            chunk = windows[first : first + self.batch_size]
            patches = np.stack([image[:, i : i + patch[0], j : j + patch[1], k : k + patch[2]] for i, j, k in chunk])
            logits = self._mirrored_logits(patches, combos) * blend
            if output is None:
                output = np.zeros((logits.shape[1], *padded), dtype=np.float32)
            for (i, j, k), window in zip(chunk, logits, strict=True):
                output[:, i : i + patch[0], j : j + patch[1], k : k + patch[2]] += window
        assert output is not None
        for axis, (size, p, axis_starts, weights) in enumerate(zip(padded, patch, starts, axis_weights, strict=True)):
            total = np.zeros(size, dtype=np.float64)
            for start in axis_starts:
                total[start : start + p] += weights
            view = [1, 1, 1, 1]
            view[axis + 1] = size
            output /= total.astype(np.float32).reshape(view)
        output = _softmax(output, axis=0).astype(np.float32, copy=False)
        crop = tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))
        return np.ascontiguousarray(output[(slice(None), *crop)])

    def _input_grid_channels(self, volume: Volume) -> Iterator[npt.NDArray[np.float32]]:
        """Each class's probability on the input grid, one at a time (linear sampling back)."""
        prepared = preprocess_image(volume, self.plan)
        for channel in self.sliding_window(channels_first(prepared)):
            yield to_input_grid(prepared, volume, channel)

    def predict_probabilities(self, volume: Volume) -> Volume:
        """Class probabilities (i, j, k, K) float32 on the input grid."""
        return volume.with_array(np.stack(list(self._input_grid_channels(volume)), axis=-1))

    def predict(self, volume: Volume) -> Volume:
        """The label map on exactly ``volume``'s grid: argmax (ties to the lower class), then post-processing."""
        channels = self._input_grid_channels(volume)
        return input_grid_labels(volume, channels, self.plan.num_classes, self.postprocessing)
