"""Classification networks: MONAI's ResNet, DenseNet, EfficientNet-BN, SE-ResNet and ViT behind one typed spec.

One backbone, then one linear head per target: the main head (classes, or K-1 ordinal thresholds, or one
logit per label for multi-label) plus one head per extra target of a multi-task model. Backbones are built
with their own classifier replaced by an identity, so every head sees the same pooled features.

Width: ResNets and SE-ResNets take ``width`` (1.0 = the published widths); a 3D ResNet-18 at width 1 has
33 M parameters (66 MB in float16), over the 25 MB a shipped package may use, so 3D plans use width 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vesalius.core.errors import InputError
from vesalius.engines.classification.spec import (  # re-exported; the spec itself is torch-free
    ARCHITECTURES,
    Architecture,
    NetworkSpec,
    head_sizes,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ClassificationNetwork",
    "MultiHeadClassifier",
    "NetworkSpec",
    "head_sizes",
]


class MultiHeadClassifier(torch.nn.Module):
    """A backbone producing pooled features and a linear head per target; returns the main logits in eval
    mode when there is one head (so MONAI inferers and ONNX export see a plain classifier)."""

    def __init__(self, backbone: torch.nn.Module, features: int, heads: Mapping[str, int], dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = torch.nn.Dropout(dropout)
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(features, size) for name, size in heads.items()})

    def forward_heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.dropout(self.backbone(images))
        return {name: head(pooled) for name, head in self.heads.items()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The main head's logits; ``forward_heads`` gives every head."""
        logits: torch.Tensor = self.heads["main"](self.dropout(self.backbone(images)))
        return logits


def _resnet(spec: NetworkSpec, depth: int) -> tuple[torch.nn.Module, int]:
    from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck

    layers = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    block = ResNetBottleneck if depth >= 50 else ResNetBlock
    planes = spec.stage_widths()
    network = ResNet(
        block=block,
        layers=layers,
        block_inplanes=planes,
        spatial_dims=spec.spatial_dims,
        n_input_channels=spec.in_channels,
        conv1_t_stride=2 if spec.spatial_dims == 2 or min(spec.input_size) >= 64 else 1,
        num_classes=1,
        feed_forward=False,
    )
    return network, planes[-1] * block.expansion


def _drop_classifier(network: torch.nn.Module, *path: str) -> int:
    """Replace the classifier found at ``path`` by an identity; its input width is the feature length."""
    parent = network
    for name in path[:-1]:
        parent = getattr(parent, name)
    features = int(getattr(parent, path[-1]).in_features)
    setattr(parent, path[-1], torch.nn.Identity())
    return features


def _backbone(spec: NetworkSpec) -> tuple[torch.nn.Module, int]:
    """The backbone without its classifier, and the length of its pooled feature vector."""
    from monai.networks.nets.densenet import DenseNet121
    from monai.networks.nets.efficientnet import EfficientNetBN
    from monai.networks.nets.senet import SEResNet50
    from monai.networks.nets.vit import ViT

    name, dims, channels = spec.architecture, spec.spatial_dims, spec.in_channels
    if name.startswith("resnet"):
        return _resnet(spec, int(name.removeprefix("resnet")))
    if name == "densenet121":
        dense = DenseNet121(spatial_dims=dims, in_channels=channels, out_channels=1)
        return dense, _drop_classifier(dense, "class_layers", "out")
    if name == "efficientnet-b0":
        efficient = EfficientNetBN(
            "efficientnet-b0", pretrained=False, spatial_dims=dims, in_channels=channels, num_classes=1
        )
        return efficient, _drop_classifier(efficient, "_fc")
    if name == "seresnet50":
        se = SEResNet50(spatial_dims=dims, in_channels=channels, num_classes=1)
        return se, _drop_classifier(se, "last_linear")
    if name == "vit":
        vit = ViT(
            in_channels=channels,
            img_size=spec.input_size,
            patch_size=[max(2, s // 8) for s in spec.input_size],
            hidden_size=384,
            mlp_dim=1536,
            num_layers=6,
            num_heads=6,
            spatial_dims=dims,
            classification=True,
            num_classes=1,
        )
        setattr(vit, "classification_head", torch.nn.Identity())  # noqa: B010 - keep the class token's features
        return _FirstOutput(vit), 384
    raise InputError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")


class _FirstOutput(torch.nn.Module):
    """MONAI's ViT returns (output, hidden states); keep the output."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.inner(images)
        first: torch.Tensor = output[0] if isinstance(output, tuple) else output
        return first


class ClassificationNetwork:
    """Builds a ``MultiHeadClassifier`` from a ``NetworkSpec``."""

    @staticmethod
    def build(spec: NetworkSpec) -> MultiHeadClassifier:
        if "main" not in spec.heads or any(size < 1 for size in spec.heads.values()):
            raise InputError(f"network heads need a 'main' head and sizes >= 1; got {spec.heads}")
        if len(spec.input_size) != spec.spatial_dims:
            raise InputError(f"input_size {spec.input_size} does not have {spec.spatial_dims} dimensions")
        backbone, features = _backbone(spec)
        return MultiHeadClassifier(backbone, features, spec.heads, spec.dropout)

    @staticmethod
    def parameter_count(network: torch.nn.Module, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)
