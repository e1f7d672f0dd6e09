"""Sliding-window inference with Gaussian blending and mirror TTA, built for speed and bounded memory.

Why not MONAI's ``sliding_window_inference``: it runs the network in float32 only, keeps a full-volume
count map next to the output, and aggregates each mirrored copy separately. Here, per the nnU-Net recipe:

- windows tile the volume with at most ``(1 - overlap) * patch`` between starts, spread evenly, the first at
  0 and the last flush with the end, so no window hangs over the border unless the volume is smaller than it;
- each window's logits are averaged over its mirrored copies, weighted by a Gaussian (sigma = patch / 8,
  floored at its smallest non-zero value so borders still count) and summed into one float32 buffer;
- the Gaussian is separable and the windows lie on a grid, so the sum of weights at a voxel is the product of
  three 1-D sums: normalising needs no volume-sized weight map;
- softmax is taken at the end, slab by slab, in place.

The network runs under autocast (``dtype``, see ``vesalius.engines.common.precision``); aggregation is float32.
Memory: the padded input (C x N) plus the K x N float32 output, nothing else of volume size.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from vesalius.core.errors import InputError
from vesalius.engines.segmentation.windows import SIGMA_SCALE, gaussian_weights, mirror_sets, window_starts

__all__ = ["SIGMA_SCALE", "gaussian_weights", "mirror_sets", "sliding_window_probabilities", "window_starts"]

_SOFTMAX_SLAB_VOXELS = 1 << 24


def _weight_sums(size: int, patch: int, starts: list[int], weights: np.ndarray) -> torch.Tensor:
    total = np.zeros(size, dtype=np.float64)
    for start in starts:
        total[start : start + patch] += weights
    return torch.from_numpy(total.astype(np.float32))


def _mirrored_logits(
    network: torch.nn.Module, patches: torch.Tensor, combos: list[tuple[int, ...]], dtype: torch.dtype | None
) -> torch.Tensor:
    """The network's float32 logits for ``patches``, averaged over the mirrored copies."""
    total: torch.Tensor | None = None
    for combo in combos:
        dims = [axis + 2 for axis in combo]
        source = torch.flip(patches, dims) if dims else patches
        with torch.autocast(patches.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = network(source)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"the network must return one tensor in eval mode; got {type(logits).__name__}")
        logits = logits.float()
        if dims:
            logits = torch.flip(logits, dims)
        total = logits if total is None else total.add_(logits)
    assert total is not None
    return total.div_(len(combos))


def sliding_window_probabilities(
    network: torch.nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.5,
    gaussian: bool = True,
    mirror_axes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Softmax probabilities (1, K, i, j, k) float32 on the CPU for ``image`` (1, C, i, j, k).

    Windows run on ``device`` in batches of ``batch_size``; volumes smaller than the patch are zero-padded
    (the normalised background) around the centre and cropped back.
    """
    if image.ndim != 5 or image.shape[0] != 1:
        raise InputError(f"image must be a (1, C, i, j, k) tensor; got shape {tuple(image.shape)}")
    if len(patch_size) != 3 or batch_size < 1:
        raise InputError(f"patch_size needs 3 sizes and batch_size >= 1; got {list(patch_size)}, {batch_size}")
    patch = tuple(int(p) for p in patch_size)
    target = torch.device(device)
    shape = tuple(int(s) for s in image.shape[2:])
    before = [max(p - s, 0) // 2 for s, p in zip(shape, patch, strict=True)]
    after = [max(p - s, 0) - b for s, p, b in zip(shape, patch, before, strict=True)]
    if any(before) or any(after):
        image = torch.nn.functional.pad(image, (before[2], after[2], before[1], after[1], before[0], after[0]))
    padded = tuple(int(s) for s in image.shape[2:])
    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch, strict=True)]
    axis_weights = [gaussian_weights(p, gaussian) for p in patch]
    blend = torch.from_numpy(np.einsum("i,j,k->ijk", *axis_weights).astype(np.float32)).to(target)
    combos = mirror_sets(mirror_axes)
    windows = list(itertools.product(*starts))
    output: torch.Tensor | None = None
    network.eval()
    with torch.inference_mode():
        for first in range(0, len(windows), batch_size):
            chunk = windows[first : first + batch_size]
            patches = torch.cat(
                [image[:, :, i : i + patch[0], j : j + patch[1], k : k + patch[2]] for i, j, k in chunk]
            ).to(target, non_blocking=True)
            logits = _mirrored_logits(network, patches, combos, dtype).mul_(blend).cpu()
            if output is None:
                output = torch.zeros((logits.shape[1], *padded), dtype=torch.float32)
            for (i, j, k), window in zip(chunk, logits, strict=True):
                output[:, i : i + patch[0], j : j + patch[1], k : k + patch[2]].add_(window)
        assert output is not None
        for axis, (size, p, axis_starts, weights) in enumerate(zip(padded, patch, starts, axis_weights, strict=True)):
            view = [1, 1, 1, 1]
            view[axis + 1] = size
            output.div_(_weight_sums(size, p, axis_starts, weights).view(view))
        slab = max(1, _SOFTMAX_SLAB_VOXELS // max(1, padded[1] * padded[2] * output.shape[0]))
        for start in range(0, padded[0], slab):
            part = output[:, start : start + slab]
            part.copy_(torch.softmax(part, dim=0))
        crop = output[
            :,
            before[0] : before[0] + shape[0],
            before[1] : before[1] + shape[1],
            before[2] : before[2] + shape[2],
        ]
        return (crop.contiguous() if crop.shape != output.shape else output)[None]
