"""Training batches for segmentation: nnU-Net's patch sampling with foreground oversampling, then augmentation.

- A case is picked uniformly. nnU-Net v2's default rule decides foreground: in every batch the last
  ``round(batch_size * foreground_oversampling)`` samples are centred on a random voxel of a randomly chosen
  class present in the case; the others are placed uniformly. A fixed share per batch (rather than a coin
  per sample) keeps every batch's class balance the same, which is what the loss curves are tuned to.
- Foreground voxel coordinates are drawn once per case (at most ``max_foreground_per_class`` per class), so
  sampling never scans a label volume.
- Patches may hang over the border (cases smaller than the patch, foreground near an edge); the outside is
  0 in both image (0 is the mean after normalization) and label (background).
- With augmentation, a larger patch is cut first (see ``augment.extraction_size``) and the spatial
  transform samples its centre, so rotations do not bring in padding.
- ``TrainingLoader`` runs the sampler in-process or in DataLoader workers with distinct seeds; any failure
  comes back as ``DataLoadingError`` naming the case and the original error, never as an opaque worker crash.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vesalius.core.errors import DataLoadingError
from vesalius.core.volume import Volume
from vesalius.engines.common.plan import AugmentationPlan, SegmentationPlan
from vesalius.engines.segmentation.augment import Augmenter, Shape

Batch = dict[str, torch.Tensor]
_WORKER_SEED_STRIDE = 1_000_003


@dataclass
class TrainingCase:
    """One preprocessed case in the layout the sampler cuts from: image (C, i, j, k), label (i, j, k)."""

    case_id: str
    image: npt.NDArray[np.float32]
    label: npt.NDArray[np.integer[Any]]
    foreground: dict[int, npt.NDArray[np.intp]] = field(default_factory=dict)
    """Per present foreground class, up to N voxel coordinates (n, 3) to centre oversampled patches on."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse arrays that do not share one grid; also run per sample, as arrays may be swapped later."""
        if self.image.ndim != 4 or self.label.ndim != 3 or self.image.shape[1:] != self.label.shape:
            raise DataLoadingError(
                f"case {self.case_id}: image (C, i, j, k) and label (i, j, k) must share a grid, found "
                f"{self.image.shape} and {self.label.shape}",
                self.case_id,
            )

    @property
    def shape(self) -> Shape:
        return (int(self.label.shape[0]), int(self.label.shape[1]), int(self.label.shape[2]))


def training_case(
    case_id: str,
    image_volume: Volume | npt.NDArray[Any],
    label_volume: Volume | npt.NDArray[Any],
    max_foreground_per_class: int = 10_000,
    seed: int = 0,
) -> TrainingCase:
    """Channels-first arrays and sampled foreground coordinates from ``preprocess_case``'s two volumes.

    Plain arrays in the volumes' layout (image (i, j, k[, c]), label (i, j, k)) are accepted as well.
    """
    image_array = image_volume.array if isinstance(image_volume, Volume) else np.asarray(image_volume)
    label_array = label_volume.array if isinstance(label_volume, Volume) else np.asarray(label_volume)
    image = image_array if image_array.ndim == 4 else image_array[..., None]
    label = label_array[..., 0] if label_array.ndim == 4 else label_array
    if image.shape[:3] != label.shape:
        raise DataLoadingError(
            f"case {case_id}: image grid {image.shape[:3]} and label grid {label.shape} differ", case_id
        )
    if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
        raise DataLoadingError(f"case {case_id}: label values must lie in 0..255 (batches carry uint8)", case_id)
    rng = np.random.default_rng(seed)
    foreground: dict[int, npt.NDArray[np.intp]] = {}
    for value in np.unique(label):
        if value == 0:
            continue
        coords = np.argwhere(label == value)
        if len(coords) > max_foreground_per_class:
            coords = coords[np.sort(rng.choice(len(coords), max_foreground_per_class, replace=False))]
        foreground[int(value)] = coords.astype(np.intp)
    return TrainingCase(
        case_id=case_id,
        image=np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32),
        label=np.ascontiguousarray(label, dtype=np.uint8),
        foreground=foreground,
    )


def crop_padded(array: npt.NDArray[Any], start: Sequence[int], size: Sequence[int]) -> npt.NDArray[Any]:
    """The box ``start .. start + size`` of the last three axes; voxels outside the array are 0."""
    lead = array.shape[:-3]
    out = np.zeros((*lead, *size), dtype=array.dtype)
    src: list[slice] = []
    dst: list[slice] = []
    for begin, length, extent in zip(start, size, array.shape[-3:], strict=True):
        low, high = max(begin, 0), min(begin + length, extent)
        if high <= low:
            return out
        src.append(slice(low, high))
        dst.append(slice(low - begin, high - begin))
    into: tuple[Any, ...] = (Ellipsis, *dst)
    source: tuple[Any, ...] = (Ellipsis, *src)
    out[into] = array[source]
    return out


class PatchSampler:
    """Draws batches from cases, deterministic for a seed.

    Augmentation comes either as a ready ``augmenter`` or as the plan's ``augmentation`` (with the plan's
    ``anisotropic_axis``), from which one is built; neither gives plain patches.
    """

    def __init__(
        self,
        cases: Sequence[TrainingCase],
        patch_size: Sequence[int],
        batch_size: int,
        foreground_oversampling: float = 0.33,
        seed: int = 0,
        augmenter: Augmenter | None = None,
        *,
        augmentation: AugmentationPlan | None = None,
        anisotropic_axis: int | None = None,
    ) -> None:
        if augmenter is None and augmentation is not None:
            augmenter = Augmenter(augmentation, patch_size, anisotropic_axis, seed=seed + 1)
        if not cases:
            raise DataLoadingError("no training cases to sample from")
        if batch_size < 1 or not 0.0 <= foreground_oversampling <= 1.0:
            raise ValueError("batch_size must be >= 1 and foreground_oversampling within 0..1")
        self.cases = list(cases)
        self.patch_size: Shape = (int(patch_size[0]), int(patch_size[1]), int(patch_size[2]))
        if augmenter is not None and augmenter.patch_size != self.patch_size:
            raise ValueError(f"augmenter patch {augmenter.patch_size} differs from the sampler's {self.patch_size}")
        self.batch_size = batch_size
        self.foreground_oversampling = foreground_oversampling
        self.augmenter = augmenter
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.reseed(seed)

    @property
    def extraction_size(self) -> Shape:
        return self.augmenter.extraction_size if self.augmenter is not None else self.patch_size

    def reseed(self, seed: int) -> None:
        """Restart every random source (sampling and augmentation) from ``seed``."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        if self.augmenter is not None:
            self.augmenter.reseed(seed + 1)

    def forced_foreground(self, index: int) -> bool:
        """nnU-Net v2's rule: the last round(batch_size * oversampling) samples of each batch are foreground."""
        return index >= round(self.batch_size * (1.0 - self.foreground_oversampling))

    def _start(self, case: TrainingCase, foreground: bool) -> list[int]:
        """Corner of the cut: bounds as nnU-Net, so a case smaller than the cut sits in its centre."""
        size = self.extraction_size
        need = [max(0, s - e) for s, e in zip(size, case.shape, strict=True)]
        lower = [-(n // 2) for n in need]
        upper = [e + n // 2 + n % 2 - s for e, n, s in zip(case.shape, need, size, strict=True)]
        classes = sorted(case.foreground)
        if foreground and classes:
            voxels = case.foreground[classes[int(self.rng.integers(len(classes)))]]
            voxel = voxels[int(self.rng.integers(len(voxels)))]
            return [
                int(np.clip(int(v) - s // 2, lo, hi)) for v, s, lo, hi in zip(voxel, size, lower, upper, strict=True)
            ]
        return [int(self.rng.integers(lo, hi + 1)) for lo, hi in zip(lower, upper, strict=True)]

    def sample(self, case: TrainingCase, foreground: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One patch pair: image (C, *patch) float32, label (1, *patch) uint8."""
        case.check()
        start = self._start(case, foreground)
        image = crop_padded(case.image, start, self.extraction_size)
        label = crop_padded(case.label, start, self.extraction_size)
        if self.augmenter is not None:
            return self.augmenter(image, label)
        return torch.from_numpy(image), torch.from_numpy(label)[None]

    def batch(self) -> Batch:
        """The next batch: image (B, C, *patch) float32, label (B, 1, *patch) uint8; errors name the case."""
        images, labels = [], []
        for index in range(self.batch_size):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            try:
                image, label = self.sample(case, self.forced_foreground(index))
            except DataLoadingError:
                raise
            except Exception as error:
                raise DataLoadingError(
                    f"case {case.case_id}: building a training patch failed: {type(error).__name__}: {error}",
                    case.case_id,
                ) from error
            images.append(image)
            labels.append(label.to(torch.uint8))
        return {"image": torch.stack(images), "label": torch.stack(labels)}

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.batch()


def sampler_from_plan(
    cases: Sequence[TrainingCase], plan: SegmentationPlan, seed: int | None = None, augment: bool = True
) -> PatchSampler:
    """The sampler the plan describes (patch, batch size, oversampling, augmentation), seeded by the plan."""
    chosen = plan.training.seed if seed is None else seed
    augmenter = (
        Augmenter(plan.augmentation, plan.patch_size, plan.anisotropic_axis, seed=chosen + 1) if augment else None
    )
    return PatchSampler(
        cases, plan.patch_size, plan.batch_size, plan.training.foreground_oversampling, chosen, augmenter
    )


@dataclass(frozen=True)
class _WorkerFailure:
    """What a worker sends instead of a batch when it fails: plain, picklable, and with the case id."""

    message: str
    case_id: str | None


class _BatchStream(IterableDataset[Batch | _WorkerFailure]):
    """Endless batches; each DataLoader worker reseeds its copy of the sampler from the worker id."""

    def __init__(self, sampler: PatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[Batch | _WorkerFailure]:
        info = get_worker_info()
        if info is not None:
            self.sampler.reseed(self.sampler.seed + _WORKER_SEED_STRIDE * (info.id + 1))
        while True:
            try:
                batch = self.sampler.batch()
            except DataLoadingError as error:
                yield _WorkerFailure(str(error), error.case_id)
                return
            except Exception as error:
                yield _WorkerFailure(f"data loading failed: {type(error).__name__}: {error}", None)
                return
            yield batch


class TrainingLoader:
    """Batches for the trainer: in-process (``workers=0``) or from persistent DataLoader workers.

    Worker w samples with seed ``seed + 1_000_003 * (w + 1)``; DataLoader takes batches from the workers in
    turn, so the sequence is reproducible for a given seed and worker count (not across worker counts).
    """

    def __init__(self, sampler: PatchSampler, workers: int = 0, pin_memory: bool | None = None) -> None:
        self.sampler = sampler
        self.workers = workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._iterator: Iterator[Any] | None = None

    def _next_batch(self) -> Batch:
        if self.workers == 0:
            batch = self.sampler.batch()
        else:
            if self._iterator is None:
                loader = DataLoader(
                    _BatchStream(self.sampler),
                    batch_size=None,
                    num_workers=self.workers,
                    persistent_workers=True,
                    pin_memory=self.pin_memory,
                )
                self._iterator = iter(loader)
            try:
                item = next(self._iterator)
            except Exception as error:
                self.close()
                raise DataLoadingError(f"a data loading worker failed: {type(error).__name__}: {error}") from error
            if isinstance(item, _WorkerFailure):
                self.close()
                raise DataLoadingError(item.message, item.case_id)
            batch = item
        return {"image": batch["image"], "label": batch["label"]}

    def iter_batches(self, n: int) -> Iterator[Batch]:
        """Yield the next ``n`` batches; workers stay alive between calls (one epoch is one call)."""
        for _ in range(n):
            yield self._next_batch()

    def close(self) -> None:
        """Stop the workers (also done on the first error)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()

    def __enter__(self) -> TrainingLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
