"""Training the nodule detector on patches of prepared CTs, and running it over a whole lung crop.

A training step draws ``batch_size`` patches: with probability ``positive_fraction`` one centred on a nodule
with a random shift (so the network does not learn that nodules sit in the middle), otherwise one centred on a
random lung voxel (where the false positives it must learn to reject live: vessels, fissures, pleura). Each
patch is flipped at random along the chosen axes, boxes with it. Steps are seeded by (seed, step), so a run
resumed from its safetensors checkpoint draws the same patches as an uninterrupted one.

Inference slides MONAI's ``SlidingWindowInferer`` over the crop: the heads' maps of overlapping windows are
stitched (not the boxes), then each level's top boxes are decoded and 3-D NMS removes duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field

from vesalius.core.errors import InputError, TrainingDivergedError
from vesalius.engines.common.checkpoint import resume_checkpoint, save_checkpoint
from vesalius.engines.common.precision import pick_device, training_dtype
from vesalius.engines.common.schedule import warmup_cosine
from vesalius.engines.detection.boxes import Detection, NoduleLike, boxes_to_detections, clip_boxes, flip_boxes
from vesalius.engines.detection.boxes import nodule_boxes as _nodule_boxes
from vesalius.engines.detection.network import AtssRetinaNetDetector
from vesalius.engines.detection.preprocess import PreparedCT

Progress = Callable[[dict[str, Any]], None]
Triple = tuple[int, int, int]

__all__ = ["DetectionCase", "DetectorTrainingResult", "DetectorTrainingSettings", "detect", "train_detector"]


class DetectorTrainingSettings(BaseModel):
    """How the detector is trained: patches, batches, optimiser, checkpoints."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patch_size: Triple = (96, 96, 96)
    """Voxels of the detection grid (96 mm at 1 mm): a 30 mm nodule with context."""
    batch_size: int = Field(default=4, ge=1)
    steps: int = Field(default=4000, ge=1)
    learning_rate: float = Field(default=3e-4, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    warmup_steps: int = Field(default=100, ge=0)
    """Linear warm-up, then cosine decay to zero at ``steps``."""
    gradient_clip: float = Field(default=10.0, gt=0.0)
    positive_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    jitter: float = Field(default=0.5, ge=0.0, le=1.0)
    """A positive patch's centre moves up to this fraction of half the patch from the nodule's centre."""
    flip_axes: tuple[int, ...] = (0, 1, 2)
    checkpoint_every: int = Field(default=200, ge=1)
    seed: int = 0


@dataclass(frozen=True, eq=False)
class DetectionCase:
    """A prepared CT and its nodules' boxes in crop voxels (see ``boxes.nodule_boxes``)."""

    prepared: PreparedCT
    boxes: npt.NDArray[np.float64]
    lung_voxels: npt.NDArray[np.int64] = field(init=False, repr=False)
    """Flat indices of the crop's lung voxels, where background patches are centred."""
    fill: float = field(init=False)
    """Padding for patches leaving the crop: the image's lowest value, air."""

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 6:
            raise InputError(f"detection case boxes must be (N, 6); got shape {self.boxes.shape}")
        object.__setattr__(self, "lung_voxels", np.flatnonzero(self.prepared.lung_mask.array))
        object.__setattr__(self, "fill", float(np.min(self.prepared.image.array)))

    @classmethod
    def from_nodules(cls, prepared: PreparedCT, nodules: Sequence[NoduleLike]) -> DetectionCase:
        return cls(prepared=prepared, boxes=_nodule_boxes(prepared, nodules))


@dataclass
class DetectorTrainingResult:
    steps: int
    state_dict: dict[str, torch.Tensor]
    """The network's weights (``detector.network``), CPU copies."""
    history: list[dict[str, Any]]
    seconds: float


def _window(
    array: npt.NDArray[Any], start: npt.NDArray[np.int64], size: Triple, fill: float
) -> npt.NDArray[np.float32]:
    """``array[start : start + size]`` with ``fill`` where it leaves the array."""
    patch = np.full(size, fill, dtype=np.float32)
    low = np.maximum(start, 0)
    high = np.minimum(start + np.asarray(size), array.shape)
    if np.any(high <= low):
        return patch
    source = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    target = tuple(slice(a - s, b - s) for a, b, s in zip(low, high, start, strict=True))
    patch[target] = array[source]
    return patch


def _patch_centre(
    case: DetectionCase, settings: DetectorTrainingSettings, rng: np.random.Generator
) -> npt.NDArray[Any]:
    shape = case.prepared.image.shape
    if len(case.boxes) and rng.random() < settings.positive_fraction:
        box = case.boxes[rng.integers(len(case.boxes))]
        shift = rng.uniform(-1.0, 1.0, 3) * settings.jitter * (np.asarray(settings.patch_size) - 1) / 2.0
        return np.asarray((box[:3] + box[3:]) / 2.0 + shift, dtype=np.float64)
    if len(case.lung_voxels):
        return np.asarray(np.unravel_index(case.lung_voxels[rng.integers(len(case.lung_voxels))], shape), float)
    return np.asarray(rng.uniform(0, 1, 3) * (np.asarray(shape) - 1), dtype=np.float64)


def sample_patch(
    case: DetectionCase, settings: DetectorTrainingSettings, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """One training patch (1, *patch_size) and its boxes in patch voxels, flipped at random."""
    size = settings.patch_size
    centre = _patch_centre(case, settings, rng)
    start = np.round(centre - (np.asarray(size) - 1) / 2.0).astype(np.int64)
    patch = _window(case.prepared.image.array, start, size, case.fill)
    boxes = clip_boxes(case.boxes - np.concatenate([start, start])[None, :], size)
    axes = [axis for axis in settings.flip_axes if rng.random() < 0.5]
    if axes:
        patch = np.ascontiguousarray(np.flip(patch, axis=tuple(axes)))
        boxes = flip_boxes(boxes, size, axes)
    return patch[None], boxes


def _learning_rate(settings: DetectorTrainingSettings, step: int) -> float:
    return settings.learning_rate * warmup_cosine(step, settings.warmup_steps, settings.steps)


def _batch(
    cases: Sequence[DetectionCase], settings: DetectorTrainingSettings, step: int, target: torch.device
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    rng = np.random.default_rng([settings.seed, step])
    patches, targets = [], []
    for _ in range(settings.batch_size):
        patch, boxes = sample_patch(cases[int(rng.integers(len(cases)))], settings, rng)
        patches.append(patch)
        targets.append(
            {
                "boxes": torch.as_tensor(boxes, dtype=torch.float32, device=target),
                "labels": torch.zeros(len(boxes), dtype=torch.int64, device=target),
            }
        )
    return torch.from_numpy(np.stack(patches)).to(target), targets


def _step(
    detector: AtssRetinaNetDetector,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, list[dict[str, torch.Tensor]]],
    settings: DetectorTrainingSettings,
    dtype: torch.dtype | None,
) -> dict[str, float]:
    images, targets = batch
    detector.train()
    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        losses = detector(images, targets)
    classification = losses[detector.cls_key].float()
    regression = losses[detector.box_reg_key].float().to(classification.device)
    loss = classification + regression
    if not torch.isfinite(loss):
        raise TrainingDivergedError(f"detector: the loss became {float(loss)}; lower learning_rate or train in float32")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(detector.network.parameters(), settings.gradient_clip)
    optimizer.step()
    values = (loss.detach(), classification.detach(), regression.detach())
    return dict(zip(("loss", "classification", "box_regression"), map(float, values), strict=True))


def train_detector(
    detector: AtssRetinaNetDetector,
    cases: Sequence[DetectionCase],
    settings: DetectorTrainingSettings | None = None,
    run_dir: Path | str | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    resume: bool = True,
    progress: Progress | None = None,
) -> DetectorTrainingResult:
    """Train ``detector`` in place on patches of ``cases``; checkpoints go to ``run_dir`` when given."""
    plan = settings or DetectorTrainingSettings()
    if not cases:
        raise InputError("detector training needs at least one case")
    target = pick_device(device)
    dtype = training_dtype(target, precision, spatial_dims=3)
    detector.to(target)
    optimizer = torch.optim.AdamW(detector.network.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay)
    history: list[dict[str, Any]] = []
    first = 0
    if run_dir is not None and resume:
        checkpoint = resume_checkpoint(run_dir, detector.network, optimizer)
        if checkpoint is not None:
            first, history = int(checkpoint.state["step"]), list(checkpoint.state["history"])
    began = time.perf_counter()
    for step in range(first, plan.steps):
        learning_rate = _learning_rate(plan, step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        record: dict[str, Any] = {"step": step + 1, "lr": learning_rate}
        # the hard negative sampler draws from torch's global generator: seed it per step, inside a fork, so a
        # resumed run samples the same anchors and the caller's generator is left as it was
        with torch.random.fork_rng(devices=[target] if target.type == "cuda" else []):
            torch.manual_seed(plan.seed * 1_000_003 + step)
            record.update(_step(detector, optimizer, _batch(cases, plan, step, target), plan, dtype))
        history.append(record)
        if progress is not None:
            progress(record)
        if run_dir is not None and ((step + 1) % plan.checkpoint_every == 0 or step + 1 == plan.steps):
            state = {"step": step + 1, "history": history, "settings": plan.model_dump(mode="json")}
            save_checkpoint(run_dir, detector.network, optimizer, state)
    weights = {name: value.detach().cpu().clone() for name, value in detector.network.state_dict().items()}
    return DetectorTrainingResult(
        steps=plan.steps, state_dict=weights, history=history, seconds=time.perf_counter() - began
    )


def detect(
    detector: AtssRetinaNetDetector,
    prepared: PreparedCT,
    patch_size: Sequence[int] = (96, 96, 96),
    overlap: float = 0.25,
    *,
    sw_batch_size: int = 1,
    device: str = "auto",
) -> list[Detection]:
    """Candidates in the crop (LPS mm centre, diameter, probability), most probable first.

    ``patch_size`` must be a multiple of the network's coarsest stride so the windows' maps tile exactly.
    """
    size = tuple(int(s) for s in patch_size)
    divisible = detector.size_divisible
    if len(size) != 3 or any(s < 1 or s % d for s, d in zip(size, divisible, strict=True)):
        raise InputError(f"detection patch_size must be 3 multiples of {tuple(divisible)}; got {tuple(patch_size)}")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"sliding-window overlap must be in [0, 1); got {overlap}")
    target = pick_device(device)
    detector.to(target)
    detector.eval()
    fill = float(np.min(prepared.image.array))
    detector.set_sliding_window_inferer(
        roi_size=size, sw_batch_size=sw_batch_size, overlap=overlap, mode="constant", cval=fill
    )
    image = torch.from_numpy(np.ascontiguousarray(prepared.image.array, dtype=np.float32))[None, None].to(target)
    with torch.no_grad():
        outputs = detector(image, use_inferer=True)
    found = outputs[0]
    boxes = found[detector.target_box_key].float().cpu().numpy()
    scores = found[detector.pred_score_key].float().cpu().numpy()
    return boxes_to_detections(prepared, boxes, scores)
