"""Segmentation inference: sliding window, mirror TTA, fold ensemble, and mapping back to the input grid.

A prediction is returned on exactly the input volume's grid (same shape, same affine), DESIGN principle 1:
the model-space probabilities are sampled back with ``vesalius.transforms.invert`` through the resample
that ``preprocess_image`` recorded.

Memory, for K classes, C input channels, N model-space voxels and M input voxels (float32): the
preprocessed image (C*N), one fold's sliding-window output (K*N, see ``sliding_window``) plus, with several
folds, their running sum (K*N), then per class one channel on the input grid (M) plus the running maximum (M)
and the label map (M, uint8). ``predict`` therefore never holds more than one input-grid probability map at a
time; ``predict_probabilities`` holds all K (K*M). ``benchmarks/seg_memory.py`` measures it on a 512x512x600 CT.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from vesalius.core.errors import InputError
from vesalius.core.volume import Volume
from vesalius.engines.common.package import ModelPackage, load_package
from vesalius.engines.common.plan import SegmentationPlan
from vesalius.engines.common.precision import autocast_dtype
from vesalius.engines.segmentation.postprocess import (
    channels_first,
    input_grid_labels,
    keep_largest_component,
    output_name,
    to_input_grid,
)
from vesalius.engines.segmentation.preprocess import preprocess_image
from vesalius.engines.segmentation.sliding_window import sliding_window_probabilities
from vesalius.io import read_volume, write_nifti

__all__ = ["Predictor", "keep_largest_component", "predict_files"]


class Predictor:
    """One or more trained folds of the same plan, ready to segment volumes on their own grid.

    ``postprocessing`` maps class index -> keep only its largest connected component. None takes what the
    first package records (``keep_largest_component``, chosen by cross-validation when it was trained).
    """

    def __init__(
        self,
        packages: Sequence[ModelPackage] | ModelPackage,
        device: str | torch.device = "cpu",
        tta: bool = True,
        overlap: float = 0.5,
        batch_size: int = 1,
        gaussian: bool = True,
        postprocessing: Mapping[int, bool] | None = None,
        precision: str = "auto",
    ) -> None:
        folds = [packages] if isinstance(packages, ModelPackage) else list(packages)
        if not folds:
            raise InputError("Predictor needs at least one model package")
        self.plans = [SegmentationPlan.model_validate(p.manifest.plan) for p in folds]
        first = self.plans[0]
        for package, plan in zip(folds[1:], self.plans[1:], strict=True):
            same = (plan.target_spacing, plan.normalization, plan.num_classes) == (
                first.target_spacing,
                first.normalization,
                first.num_classes,
            )
            if not same:
                raise InputError(
                    f"{package.folder}: target_spacing, normalization and num_classes must match the first "
                    f"package ({folds[0].folder}) to ensemble; found {list(plan.target_spacing)}, "
                    f"{plan.num_classes} classes vs {list(first.target_spacing)}, {first.num_classes} classes"
                )
        self.plan = first
        self.device = torch.device(device)
        self.tta, self.overlap, self.batch_size, self.gaussian = tta, overlap, batch_size, gaussian
        self.dtype = autocast_dtype(self.device, precision)
        if postprocessing is None:
            recorded = folds[0].manifest.postprocessing.get("keep_largest_component", [])
            postprocessing = {int(value): True for value in recorded}
        self.postprocessing = dict(postprocessing)
        self.networks: list[torch.nn.Module] = []
        for package, plan in zip(folds, self.plans, strict=True):
            network = plan.network.build()
            network.load_state_dict(package.state_dict())  # safetensors: no unpickling
            self.networks.append(network.to(self.device).eval())

    def model_space(self, volume: Volume) -> tuple[Volume, torch.Tensor]:
        """The preprocessed image and the ensemble-mean probabilities (1, K, i, j, k) on its grid."""
        prepared = preprocess_image(volume, self.plan)
        image = torch.from_numpy(channels_first(prepared))[None]
        total: torch.Tensor | None = None
        with torch.inference_mode():
            for network, plan in zip(self.networks, self.plans, strict=True):
                mirror = plan.augmentation.mirror_axes if self.tta else ()
                probabilities = sliding_window_probabilities(
                    network,
                    image,
                    plan.patch_size,
                    overlap=self.overlap,
                    gaussian=self.gaussian,
                    mirror_axes=mirror,
                    device=self.device,
                    batch_size=self.batch_size,
                    dtype=self.dtype,
                )
                total = probabilities if total is None else total.add_(probabilities)
            assert total is not None
            return prepared, total.div_(len(self.networks))

    def _input_grid_channels(
        self, volume: Volume, space: tuple[Volume, torch.Tensor] | None
    ) -> Iterator[npt.NDArray[np.float32]]:
        """Each class's probability on the input grid, one at a time (linear sampling back)."""
        prepared, probabilities = space if space is not None else self.model_space(volume)
        for channel in probabilities[0]:
            yield to_input_grid(prepared, volume, channel.numpy())

    def predict_probabilities(self, volume: Volume) -> Volume:
        """Class probabilities (i, j, k, K) float32 on the input grid; holds all K maps, see module notes."""
        channels = list(self._input_grid_channels(volume, None))
        return volume.with_array(np.stack(channels, axis=-1))

    def predict(self, volume: Volume, space: tuple[Volume, torch.Tensor] | None = None) -> Volume:
        """The label map on exactly ``volume``'s grid: argmax of the ensemble, then optional post-processing.
        ``space`` is ``model_space(volume)`` when the caller has it already (e.g. to explain the same pass)."""
        channels = self._input_grid_channels(volume, space)
        return input_grid_labels(volume, channels, self.plan.num_classes, self.postprocessing)


def predict_files(
    package_dirs: Sequence[Path | str],
    inputs: Sequence[Path | str],
    output_dir: Path | str,
    device: str | torch.device = "cpu",
    tta: bool = True,
    postprocessing: Mapping[int, bool] | None = None,
    precision: str = "auto",
    overlap: float = 0.5,
) -> list[Path]:
    """Segment each input (NIfTI/NRRD/MHA file or DICOM folder) and write a NIfTI label map per input.

    The written geometry is the input's: the label map lies on the grid ``read_volume`` returned.
    """
    predictor = Predictor(
        [load_package(folder) for folder in package_dirs],
        device=device,
        tta=tta,
        postprocessing=postprocessing,
        precision=precision,
        overlap=overlap,
    )
    output = Path(output_dir)
    sources = [Path(item) for item in inputs]
    names = [output_name(source) for source in sources]
    if len(set(names)) != len(names):
        raise InputError(f"inputs would overwrite each other's output in {output}: {sorted(names)}")
    written: list[Path] = []
    for source, name in zip(sources, names, strict=True):
        labels = predictor.predict(read_volume(source))
        written.append(write_nifti(labels, output / name))
    return written
