"""Attribution maps: which voxels a classifier, segmenter or detector relied on for one output.

Every target (a class index, a segmented region, a detected box) becomes a small module whose forward
returns one scalar per image, so Grad-CAM, Grad-CAM++, occlusion and integrated gradients share one code
path. Grad-CAM, occlusion and integrated gradients come from Captum; Grad-CAM++ is not in Captum and is
written here with hooks (Chattopadhay et al. 2018, with the closed form for exp(score)).

Every map is float32 on the input's spatial grid, non-negative and scaled to [0, 1] (an all-zero map stays
zero): Grad-CAM(++) is rectified at the layer and upsampled; occlusion and integrated gradients are the
absolute value summed over input channels. Baselines (occlusion patch, IG start point) are 0: for inputs
normalised to zero mean that is the dataset's mean intensity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from torch import nn

from vesalius.core.errors import InputError

__all__ = ["METHODS", "BoxTarget", "RegionTarget", "default_layer", "explain", "explain_region", "score_module"]

METHODS = ("gradcam", "gradcam++", "occlusion", "integrated_gradients")
OCCLUSION_VOXEL_BUDGET = 2**21
"""Occluded copies evaluated at once hold at most this many voxels (8 MB of float32 input per batch)."""
MAX_PERTURBATIONS_PER_EVAL = 64


@dataclass(frozen=True)
class RegionTarget:
    """A segmentation class over a region: the scalar is the mean logit of ``class_index`` over ``mask``'s
    voxels (``mask`` on the network input's spatial grid)."""

    class_index: int
    mask: npt.NDArray[Any]


@dataclass(frozen=True)
class BoxTarget:
    """A detected box, in MONAI's StandardMode (xmin, ymin, zmin, xmax, ymax, zmax) along the input's array axes
    (i, j, k), in voxels of the network input.

    The scalar is the largest classification logit of ``class_index`` over every anchor (all anchor shapes, all
    pyramid levels) whose centre lies inside the box, edges included. Anchor centres follow MONAI's anchor
    generator: index * stride + stride // 2 per axis, stride = input size // map size. When no anchor centre
    falls inside the box (a box smaller than the finest stride), the anchors at the finest level's location
    nearest the box centre stand in.
    """

    box: tuple[float, float, float, float, float, float]
    class_index: int = 0


Target = int | RegionTarget | BoxTarget


class _ClassScore(nn.Module):
    def __init__(self, model: nn.Module, class_index: int) -> None:
        super().__init__()
        self.model, self.class_index = model, class_index

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not 0 <= self.class_index < logits.shape[1]:
            found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InputError(
                f"target class {self.class_index}: the model must return logits (N, K) with K > it; found {found}"
            )
        return logits[:, self.class_index]


class _RegionScore(nn.Module):
    def __init__(self, model: nn.Module, class_index: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.model, self.class_index = model, class_index
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        mask = self.get_buffer("mask")
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape[2:]) != tuple(mask.shape):
            found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InputError(
                f"region target: the network must return logits (N, K, *{tuple(mask.shape)}); found {found}"
            )
        if not 0 <= self.class_index < logits.shape[1]:
            raise InputError(f"region target: class {self.class_index} is not among the {logits.shape[1]} classes")
        dims = tuple(range(1, mask.ndim + 1))
        return (logits[:, self.class_index] * mask).sum(dim=dims) / mask.sum()


class _BoxScore(nn.Module):
    def __init__(self, model: nn.Module, target: BoxTarget) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.model(images)
        if not isinstance(outputs, dict) or "classification" not in outputs:
            raise InputError("box target: the model must be a RetinaNet returning {'classification': [maps], ...}")
        maps: list[torch.Tensor] = outputs["classification"]
        classes = int(getattr(self.model, "num_classes", 1))
        if not 0 <= self.target.class_index < classes:
            raise InputError(f"box target: class {self.target.class_index} is not among the {classes} classes")
        spatial = images.shape[2:]
        low, high = self.target.box[: len(spatial)], self.target.box[len(spatial) :]
        best = [m for m in (self._inside(level, spatial, low, high) for level in maps) if m is not None]
        if not best:
            best = [self._nearest(maps[0], spatial, low, high)]
        return torch.stack(best).amax(dim=0)

    def _class_map(self, level: torch.Tensor) -> torch.Tensor:
        classes = int(getattr(self.model, "num_classes", 1))
        shaped = level.view(level.shape[0], -1, classes, *level.shape[2:])  # (N, A, K, *grid), as MONAI reads it
        return shaped[:, :, self.target.class_index]

    def _inside(
        self, level: torch.Tensor, spatial: Sequence[int], low: Sequence[float], high: Sequence[float]
    ) -> torch.Tensor | None:
        scores = self._class_map(level)
        for axis, (size, grid) in enumerate(zip(spatial, level.shape[2:], strict=True)):
            stride = size // grid
            centres = torch.arange(grid, device=level.device) * stride + stride // 2
            keep = (centres >= low[axis]) & (centres <= high[axis])
            if not bool(keep.any()):
                return None
            scores = scores.index_select(axis + 2, keep.nonzero().flatten())
        return scores.flatten(1).amax(dim=1)

    def _nearest(
        self, level: torch.Tensor, spatial: Sequence[int], low: Sequence[float], high: Sequence[float]
    ) -> torch.Tensor:
        scores = self._class_map(level)
        for axis, (size, grid) in enumerate(zip(spatial, level.shape[2:], strict=True)):
            stride = size // grid
            index = round(((low[axis] + high[axis]) / 2 - stride // 2) / stride)
            scores = scores.narrow(axis + 2, min(max(index, 0), grid - 1), 1)
        return scores.flatten(1).amax(dim=1)


def _unwrap(model: nn.Module) -> nn.Module:
    """A RetinaNetDetector keeps its weights in ``.network``: explain that (layer names are relative to it)."""
    network = getattr(model, "network", None)
    return network if isinstance(network, nn.Module) and hasattr(model, "anchor_generator") else model


def score_module(model: nn.Module, target: Target, spatial_shape: Sequence[int]) -> nn.Module:
    """The model wrapped so that its forward returns one scalar per image for ``target``."""
    if isinstance(target, bool) or not isinstance(target, int | RegionTarget | BoxTarget):
        raise InputError(f"target must be a class index, a RegionTarget or a BoxTarget; found {type(target).__name__}")
    if isinstance(target, int):
        return _ClassScore(model, target)
    if isinstance(target, BoxTarget):
        if len(target.box) != 2 * len(spatial_shape):
            raise InputError(f"box target: expected {2 * len(spatial_shape)} coordinates, found {len(target.box)}")
        return _BoxScore(model, target)
    mask = _region_mask(target, spatial_shape)
    return _RegionScore(model, target.class_index, torch.as_tensor(mask, dtype=torch.float32))


def _region_mask(target: RegionTarget, spatial_shape: Sequence[int]) -> npt.NDArray[np.bool_]:
    mask: npt.NDArray[np.bool_] = np.asarray(target.mask) != 0
    if mask.shape != tuple(spatial_shape) or not mask.any():
        raise InputError(
            f"region target: mask must be a non-empty array of shape {tuple(spatial_shape)} (the input's spatial "
            f"grid); found shape {mask.shape} with {int(np.count_nonzero(mask))} voxels"
        )
    return mask


def _last_feature_map(model: nn.Module, image: torch.Tensor) -> str | None:
    """The module whose forward finishes last with a 4-D/5-D tensor output larger than 1 voxel (a probe pass)."""
    finished: list[str] = []
    names = {id(m): name for name, m in model.named_modules() if name}

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim in (4, 5) and output[0, 0].numel() > 1:
            finished.append(names[id(module)])

    handles = [m.register_forward_hook(record) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad(), _evaluating(model):
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    return finished[-1] if finished else None


def default_layer(model: nn.Module, image: torch.Tensor | None = None) -> str:
    """The dotted name of the layer Grad-CAM uses unless told otherwise: the last convolutional feature stage.

    - ``MultiHeadClassifier`` on a ResNet: ``backbone.layer4``, the last residual stage before pooling.
    - DynUNet: ``bottleneck``, the deepest stage. Its features are the most semantic and have not yet been
      mixed with the skip connections; a decoder stage near full resolution largely re-expresses the skip
      features, so its map echoes the predicted mask rather than showing the context the network used. This
      is Seg-Grad-CAM's choice (Vinogradova et al. 2020); pass ``layer="upsamples.N"`` for finer maps.
    - RetinaNet with the ResNet-FPN extractor: the last ResNet stage feeding the pyramid.
    - Otherwise, with ``image``: the module that last produces a 4-D/5-D feature map in a probe forward pass;
      without it, the last convolution registered.
    """
    model = _unwrap(model)
    names = dict(model.named_modules())
    if "backbone.layer4" in names and "heads" in names:
        return "backbone.layer4"
    if {"bottleneck", "upsamples", "output_block"} <= names.keys():
        return "bottleneck"
    stages = names.get("feature_extractor.stages")
    if isinstance(stages, nn.ModuleList) and len(stages) > 0:
        return f"feature_extractor.stages.{len(stages) - 1}"
    found = _last_feature_map(model, image) if image is not None else None
    if found is None:
        convs = [name for name, m in names.items() if isinstance(m, nn.modules.conv._ConvNd)]
        found = convs[-1] if convs else None
    if found is None:
        raise InputError(
            f"{type(model).__name__} has no convolutional layer for Grad-CAM; use occlusion or integrated_gradients"
        )
    return found


def _layer(model: nn.Module, name: str) -> nn.Module:
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if name and name in modules:
        found: nn.Module = modules[name]
        return found
    conv = nn.modules.conv._ConvNd
    candidates = [
        n for n, m in modules.items() if n and n.count(".") <= 1 and any(isinstance(c, conv) for c in m.modules())
    ]
    shown = ", ".join(candidates[:30]) + (f" (and {len(candidates) - 30} more)" if len(candidates) > 30 else "")
    raise InputError(f"--layer {name!r} is not a layer of {type(model).__name__}; candidates: {shown}")


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off, BatchNorm on running statistics), then every module's mode and every parameter's
    ``.grad`` back as they were."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, grad in grads:
            parameter.grad = grad


def _scaled(attribution: torch.Tensor) -> npt.NDArray[np.float32]:
    values = np.nan_to_num(attribution.detach().float().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)
    values = np.clip(values, 0.0, None)
    peak = float(values.max()) if values.size else 0.0
    scaled: npt.NDArray[np.float32] = (values / peak if peak > 0 else values).astype(np.float32)
    return scaled


def _gradcam_plus_plus(scorer: nn.Module, layer: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++: alpha = g^2 / (2 g^2 + sum(A) g^3) (exp(score) derivatives), weights = sum(alpha relu(g))."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, output: seen.append(output))
    try:
        score = scorer(image).sum()
    finally:
        handle.remove()
    activation = seen[-1]
    (grad,) = torch.autograd.grad(score, activation)
    dims = tuple(range(2, activation.ndim))
    grad2 = grad.pow(2)
    denominator = 2 * grad2 + activation.sum(dim=dims, keepdim=True) * grad2 * grad
    alpha = grad2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = (alpha * torch.relu(grad)).sum(dim=dims, keepdim=True)
    return torch.relu((weights * activation).sum(dim=1, keepdim=True)).detach()


def _cam(scorer: nn.Module, layer: nn.Module, name: str, image: torch.Tensor, plus: bool) -> torch.Tensor:
    if plus:
        cam = _gradcam_plus_plus(scorer, layer, image)
    else:
        cam = LayerGradCam(scorer, layer).attribute(image, relu_attributions=True)
    if not isinstance(cam, torch.Tensor) or cam.ndim != image.ndim:
        raise InputError(
            f"layer {name!r} does not give a {image.ndim - 2}-D feature map for Grad-CAM; choose a convolutional stage"
        )
    mode = "bilinear" if image.ndim == 4 else "trilinear"
    upsampled: torch.Tensor = LayerAttribution.interpolate(cam, tuple(image.shape[2:]), mode)
    return upsampled[0, 0]


def _per_axis(value: int | Sequence[int] | None, default: Sequence[int], field: str) -> tuple[int, ...]:
    if value is None:
        return tuple(default)
    values = (value,) * len(default) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != len(default) or min(values) < 1:
        raise InputError(f"{field} must be one positive size per spatial axis ({len(default)}); found {value}")
    return values


def _occlusion(
    scorer: nn.Module, image: torch.Tensor, window: int | Sequence[int] | None, stride: int | Sequence[int] | None
) -> torch.Tensor:
    spatial = tuple(image.shape[2:])
    if len(spatial) == 2:  # 2-D: windows of 1/8 of a side, half overlapping (225 occluded copies)
        shape = _per_axis(window, [max(1, round(s / 8)) for s in spatial], "window")
        step = _per_axis(stride, [max(1, w // 2) for w in shape], "stride")
    else:  # 3-D: 1/4 of a side, side by side (64 copies); 1/8 half-overlapping would be 4,096 forward passes
        shape = _per_axis(window, [max(1, round(s / 4)) for s in spatial], "window")
        step = _per_axis(stride, list(shape), "stride")
    per_eval = max(1, min(MAX_PERTURBATIONS_PER_EVAL, OCCLUSION_VOXEL_BUDGET // image[0].numel()))
    channels = image.shape[1]
    with torch.no_grad():
        result = Occlusion(scorer).attribute(
            image,
            sliding_window_shapes=(channels, *shape),
            strides=(channels, *step),
            baselines=0.0,
            perturbations_per_eval=per_eval,
        )
    summed: torch.Tensor = result[0].abs().sum(dim=0)
    return summed


def explain(
    model: nn.Module,
    image: torch.Tensor,
    target: Target,
    method: str,
    *,
    layer: str | None = None,
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    steps: int = 32,
    internal_batch_size: int = 4,
) -> npt.NDArray[np.float32]:
    """An attribution map of ``target`` for ``image`` (1, C, *spatial), on its spatial grid, in [0, 1].

    ``layer`` (Grad-CAM, Grad-CAM++) defaults to ``default_layer``. Occlusion slides a zero patch of
    ``window`` voxels (default 1/8 of each side in 2-D, 1/4 in 3-D) by ``stride`` (default half the window in
    2-D, the window in 3-D), evaluating
    as many occluded copies at once as ``OCCLUSION_VOXEL_BUDGET`` allows; integrated gradients integrate
    from a zero image in ``steps`` steps, ``internal_batch_size`` at a time.
    """
    if method not in METHODS:
        raise InputError(f"explanation method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if not isinstance(image, torch.Tensor) or image.ndim not in (4, 5) or image.shape[0] != 1:
        found = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"image must be a tensor (1, C, *spatial) with 2 or 3 spatial axes; found {found}")
    if steps < 1 or internal_batch_size < 1:
        raise InputError(f"steps and internal_batch_size must be >= 1; found {steps} and {internal_batch_size}")
    network = _unwrap(model)
    device = next(network.parameters(), torch.empty(0)).device
    image = image.detach().to(device=device, dtype=torch.float32)
    scorer = score_module(network, target, image.shape[2:]).to(device)
    with _evaluating(network), torch.enable_grad():
        if method in ("gradcam", "gradcam++"):
            name = layer if layer is not None else default_layer(network, image)
            attribution = _cam(scorer, _layer(network, name), name, image.requires_grad_(True), method == "gradcam++")
        elif method == "occlusion":
            attribution = _occlusion(scorer, image, window, stride)
        else:
            integrated = IntegratedGradients(scorer).attribute(
                image.requires_grad_(True), baselines=0.0, n_steps=steps, internal_batch_size=internal_batch_size
            )
            attribution = integrated[0].abs().sum(dim=0)
    return _scaled(attribution)


def _window(mask: npt.NDArray[Any], patch: Sequence[int]) -> list[tuple[int, int]]:
    """Per axis (start, stop) of a patch centred on the mask's bounding box, inside the image where it fits."""
    where = np.nonzero(mask)
    bounds = []
    for axis, size in enumerate(patch):
        centre = (int(where[axis].min()) + int(where[axis].max()) + 1) // 2
        start = min(max(centre - size // 2, 0), max(mask.shape[axis] - size, 0))
        bounds.append((start, min(start + size, mask.shape[axis])))
    return bounds


def region_patch(
    image: torch.Tensor, target: RegionTarget, patch_size: Sequence[int]
) -> tuple[torch.Tensor, RegionTarget, tuple[slice, ...]]:
    """The ``patch_size`` window centred on the region's bounding box (moved inside the image, zero-padded after
    it where the image is smaller), the target cut to it, and the window's slices in the image."""
    spatial = tuple(image.shape[2:])
    if len(patch_size) != len(spatial) or min(patch_size) < 1:
        raise InputError(f"patch_size must be one positive size per spatial axis of {spatial}; found {patch_size}")
    mask = _region_mask(target, spatial)
    bounds = _window(mask, patch_size)
    region = tuple(slice(a, b) for a, b in bounds)
    padding = [(0, size - (b - a)) for size, (a, b) in zip(patch_size, bounds, strict=True)]
    flat = [p for pad in reversed(padding) for p in pad]  # torch pads the last axis first
    patch = torch.nn.functional.pad(image[(slice(None), slice(None), *region)], flat)
    return patch, RegionTarget(target.class_index, np.pad(mask[region], padding)), region


def explain_region(
    network: nn.Module,
    image: torch.Tensor,
    target: RegionTarget,
    method: str,
    patch_size: Sequence[int],
    **kwargs: Any,
) -> npt.NDArray[np.float32]:
    """Explain a segmented region of a large volume within one ``patch_size`` window centred on its bounding box.

    The window is moved inside the image where it fits and zero-padded (after the image) where the image is
    smaller; the region's voxels outside the window are left out of the score. The map is pasted into zeros of
    the full spatial shape, so memory follows the patch, not the volume. ``kwargs`` go to ``explain``.
    """
    patch, patch_target, region = region_patch(image, target, patch_size)
    bounds = [(r.start, r.stop) for r in region]
    spatial = tuple(image.shape[2:])
    patch_map = explain(network, patch, patch_target, method, **kwargs)
    full = np.zeros(spatial, dtype=np.float32)
    full[region] = patch_map[tuple(slice(0, b - a) for a, b in bounds)]
    return full
