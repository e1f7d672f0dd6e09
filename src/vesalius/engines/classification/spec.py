"""What a classification network is, as data: its architecture, input and heads, with no torch import.

Split from ``networks`` (which builds the torch modules) so that a plan can be read where torch is absent,
e.g. by the ONNX Runtime backend in ``vesalius.deploy.runtime``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vesalius.core.errors import InputError

Architecture = Literal[
    "resnet10", "resnet18", "resnet34", "resnet50", "densenet121", "efficientnet-b0", "seresnet50", "vit"
]
ARCHITECTURES: tuple[str, ...] = Architecture.__args__  # type: ignore[attr-defined]

__all__ = ["ARCHITECTURES", "Architecture", "NetworkSpec", "head_sizes"]
RESNET_WIDTHS = (64, 128, 256, 512)  # published ResNet stage widths (width 1.0)
MIN_STAGE_WIDTH = 8


class NetworkSpec(BaseModel):
    """What to build: the backbone, its input, and the size of each output head."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: Architecture = Field(default="resnet18", description="Backbone from monai.networks.nets")
    spatial_dims: Literal[2, 3] = Field(description="2 for images (and 2.5D stacks), 3 for volumes")
    in_channels: int = Field(ge=1, description="Input channels (2.5D: the number of stacked slices)")
    input_size: list[int] = Field(description="(H, W) or (D, H, W); ViT needs it, the CNNs accept any size")
    heads: dict[str, int] = Field(description="Output size per head; 'main' first, then extra targets")
    width: float = Field(default=1.0, gt=0, le=2, description="Width multiplier of ResNet/SE-ResNet stages")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout before the heads (MC dropout needs > 0)")

    def stage_widths(self) -> list[int]:
        """A ResNet's channels per stage: the published widths times ``width``, never under 8."""
        return [max(MIN_STAGE_WIDTH, round(p * self.width)) for p in RESNET_WIDTHS]


def head_sizes(kind: str, class_names: Sequence[str], extra: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Output units per head: K classes (binary: 2, so softmax and AUC read alike), K-1 ordinal thresholds,
    or one logit per label; each extra target is a multi-class head."""
    classes = len(class_names)
    main = {"binary": 2, "multiclass": classes, "ordinal": classes - 1, "multilabel": classes}.get(kind)
    if main is None or main < 1:
        raise InputError(f"cannot size a {kind!r} head for classes {list(class_names)}")
    return {"main": main, **{name: len(names) for name, names in extra.items()}}
