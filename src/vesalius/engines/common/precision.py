"""Which reduced precision a device runs a network in, shared by training and inference of every engine.

``auto`` picks what is fast and safe on the hardware at hand: bfloat16 on a GPU that supports it (no loss
scaling needed), float16 with a gradient scaler on older GPUs, bfloat16 on a CPU whose oneDNN kernels support
it (AVX512-BF16 or AMX: conv3d runs about 4x faster than float32 on this project's 2-core EPYC), and float32
elsewhere. Weights, optimizer state, losses and the aggregated outputs always stay float32.
"""

from __future__ import annotations

from typing import Literal

import torch

from vesalius.core.errors import InputError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

__all__ = ["PRECISIONS", "Precision", "autocast_dtype", "cpu_supports_bf16", "pick_device", "training_dtype"]


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise InputError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from error


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bfloat16 kernels on this CPU (otherwise bf16 is emulated and slower)."""
    available = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    return bool(available and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype to autocast the network to on ``device``, or None for plain float32."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise InputError("float16 autocast needs a CUDA device; use bf16 or fp32 on the CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def training_dtype(device: torch.device, precision: str, spatial_dims: int) -> torch.dtype | None:
    """The autocast dtype to train in: as ``autocast_dtype``, except that ``auto`` trains 3-D networks in float32
    on the CPU (measured: a 3-D ResNet under CPU bf16 autocast went to nan in its first epoch)."""
    if precision == "auto" and device.type == "cpu" and spatial_dims == 3:
        return None
    return autocast_dtype(device, precision)
