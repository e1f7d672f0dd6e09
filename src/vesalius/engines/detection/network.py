"""The nodule candidate detector: a 3-D RetinaNet on a ResNet-FPN backbone, built from MONAI's detection parts.

MONAI's own ``resnet_fpn_feature_extractor`` needs torchvision (its ``IntermediateLayerGetter``), which does not
import beside our torch, so ``ResNetFPN`` runs MONAI's 3-D ResNet stage by stage and feeds the stages it returns
to MONAI's ``FeaturePyramidNetwork`` (which needs no torchvision), plus one max-pooled level on top, as
MONAI's LUNA16 detector does. Anchors are matched to nodule boxes with ATSS (adaptive IoU threshold per box,
which suits objects from 3 to 30 mm better than one fixed IoU), negatives are hard-mined, classification is
trained with focal loss and box regression with generalised IoU on the decoded boxes; inference keeps the top
boxes of each level and applies 3-D NMS.

Boxes are in MONAI's ``StandardMode`` (xmin, ymin, zmin, xmax, ymax, zmax) along the image's array axes
(i, j, k), in voxels of the detection grid: see ``vesalius.engines.detection.boxes``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.losses.focal_loss import FocalLoss
from monai.losses.giou_loss import BoxGIoULoss
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from monai.networks.nets.resnet import ResNet, ResNetBlock
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

__all__ = ["AtssRetinaNetDetector", "DetectorSpec", "ResNetFPN", "build_detector", "count_parameters"]

Triple = tuple[int, int, int]


class DetectorSpec(BaseModel):
    """The detector's architecture and its training-time matching, sampling and loss settings.

    Defaults are for the 1 mm isotropic detection grid of ``DetectionGeometry``: the stem (stride 2 convolution
    and a stride 2 max pool) puts the finest level at 4 mm, where a 3 mm nodule still gets anchors; levels at
    4, 8, 16 and 32 mm with two base shapes (4 and 6 voxels) give anchors of 4 to 48 mm edge.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    """Residual (basic) blocks per ResNet stage; stages above the highest returned one are not built."""
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    """Channels of each stage."""
    fpn_channels: int = Field(default=64, ge=1)
    returned_layers: tuple[int, ...] = (1, 2, 3)
    """ResNet stages (1..4) whose maps feed the FPN; one max-pooled level is added on top of the last."""
    conv1_stride: Triple = (2, 2, 2)
    """Stem stride per axis: (2, 2, 1) keeps through-plane resolution on a grid with thick slices."""
    conv1_kernel: Triple = (7, 7, 7)
    max_pool: bool = True
    """The stem's stride 2 max pool; off doubles the finest level's resolution (and its cost)."""
    anchor_shapes: tuple[Triple, ...] = ((4, 4, 4), (6, 6, 6))
    """Base anchor edges in voxels at the finest level; each coarser level doubles them. Even numbers:
    MONAI rounds half edges."""
    in_channels: int = Field(default=1, ge=1)
    num_classes: int = Field(default=1, ge=1)
    # training-time matching and sampling
    atss_candidates: int = Field(default=4, ge=1)
    """Anchors per level nearest a box's centre that ATSS considers (MONAI's LUNA16 setting)."""
    sampler_batch_per_image: int = Field(default=64, ge=1)
    sampler_positive_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    sampler_min_negatives: int = Field(default=16, ge=0)
    sampler_pool_size: float = Field(default=20.0, ge=1.0)
    focal_gamma: float = Field(default=2.0, ge=0.0)
    # inference-time box selection
    score_threshold: float = Field(default=0.02, ge=0.0, le=1.0)
    topk_per_level: int = Field(default=1000, ge=1)
    nms_iou: float = Field(default=0.22, gt=0.0, le=1.0)
    """Small nodules' boxes overlap little even when they are the same nodule, hence a low threshold."""
    detections_per_image: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DetectorSpec:
        if not self.returned_layers or sorted(set(self.returned_layers)) != list(self.returned_layers):
            raise ValueError(f"returned_layers must be increasing stage numbers; got {self.returned_layers}")
        if self.returned_layers[0] < 1 or self.returned_layers[-1] > 4:
            raise ValueError(f"returned_layers must lie in 1..4; got {self.returned_layers}")
        if min(self.layers) < 1 or min(self.widths) < 1 or min(self.conv1_stride) < 1:
            raise ValueError("layers, widths and conv1_stride must be positive")
        if not self.anchor_shapes or any(min(shape) < 1 for shape in self.anchor_shapes):
            raise ValueError(f"anchor_shapes must be positive voxel edges; got {self.anchor_shapes}")
        return self

    @property
    def strides(self) -> list[Triple]:
        """Voxel stride of each feature level, finest first (the returned stages and the pooled level)."""
        stem = [s * (2 if self.max_pool else 1) for s in self.conv1_stride]
        levels = [*self.returned_layers, self.returned_layers[-1] + 1]
        return [(stem[0] * 2 ** (k - 1), stem[1] * 2 ** (k - 1), stem[2] * 2 ** (k - 1)) for k in levels]

    @property
    def size_divisible(self) -> Triple:
        """What the input's shape must divide by (the coarsest stride); the detector pads to it."""
        return self.strides[-1]

    @property
    def feature_map_scales(self) -> list[int]:
        """Anchor scale of each level relative to the finest (its stride ratio, isotropic in levels)."""
        return [2**n for n in range(len(self.strides))]


class ResNetFPN(nn.Module):
    """MONAI's 3-D ResNet run stage by stage, its chosen stages fed to an FPN: an ``OrderedDict`` of maps.

    ``out_channels`` is what ``RetinaNet`` reads to size its heads.
    """

    def __init__(self, spec: DetectorSpec) -> None:
        super().__init__()
        resnet = ResNet(
            block=ResNetBlock,
            layers=list(spec.layers),
            block_inplanes=list(spec.widths),
            spatial_dims=3,
            n_input_channels=spec.in_channels,
            conv1_t_size=spec.conv1_kernel,  # type: ignore[arg-type]
            conv1_t_stride=spec.conv1_stride,  # type: ignore[arg-type]
            no_max_pool=not spec.max_pool,
            feed_forward=False,
        )
        pool: nn.Module = resnet.maxpool if spec.max_pool else nn.Identity()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.act, pool)
        stages = [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
        self.stages = nn.ModuleList(stages[: spec.returned_layers[-1]])  # the unused top stages are dropped
        self.returned = tuple(k - 1 for k in spec.returned_layers)
        in_channels = [spec.widths[k] * ResNetBlock.expansion for k in self.returned]
        self.fpn = FeaturePyramidNetwork(3, in_channels, spec.fpn_channels, extra_blocks=LastLevelMaxPool(3))
        self.out_channels = spec.fpn_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(images)
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.returned:
                features[str(len(features))] = x
        return OrderedDict(self.fpn(features))


class AtssRetinaNetDetector(RetinaNetDetector):
    """MONAI's RetinaNetDetector with its anchor matching limited to ATSS.

    MONAI's own ``compute_anchor_matched_idxs`` first asks whether the matcher is torchvision's ``Matcher``,
    which without torchvision raises ``OptionalImportError``; this copy of it knows only ATSS.
    """

    def compute_anchor_matched_idxs(
        self,
        anchors: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
        num_anchor_locs_per_level: Sequence[int],
    ) -> list[torch.Tensor]:
        if not isinstance(self.proposal_matcher, ATSSMatcher):
            raise TypeError(f"the detector matches anchors with ATSS only; got {type(self.proposal_matcher).__name__}")
        matched = []
        for anchors_per_image, targets_per_image in zip(anchors, targets, strict=True):
            boxes = targets_per_image[self.target_box_key].to(anchors_per_image.device)
            if boxes.numel() == 0:  # a patch without nodules: every anchor is background
                matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64, device=boxes.device))
                continue
            _, indices = self.proposal_matcher(
                boxes, anchors_per_image, num_anchor_locs_per_level, self.num_anchors_per_loc
            )
            matched.append(indices)
        return matched


def build_detector(spec: DetectorSpec | None = None) -> AtssRetinaNetDetector:
    """A RetinaNet detector with ATSS matching, hard negative sampling, focal and GIoU losses, and 3-D NMS.

    Only ``detector.network`` holds weights: save, load and optimise that.
    """
    plan = spec or DetectorSpec()
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=plan.feature_map_scales, base_anchor_shapes=[list(s) for s in plan.anchor_shapes]
    )
    network = RetinaNet(
        spatial_dims=3,
        num_classes=plan.num_classes,
        num_anchors=len(plan.anchor_shapes),
        feature_extractor=ResNetFPN(plan),
        size_divisible=plan.size_divisible,
    )
    detector = AtssRetinaNetDetector(network=network, anchor_generator=anchors)
    detector.set_atss_matcher(num_candidates=plan.atss_candidates, center_in_gt=False)
    detector.set_hard_negative_sampler(
        batch_size_per_image=plan.sampler_batch_per_image,
        positive_fraction=plan.sampler_positive_fraction,
        min_neg=plan.sampler_min_negatives,
        pool_size=plan.sampler_pool_size,
    )
    # sigmoid focal loss on the sampled anchors; the sampler already balances them, so no alpha weighting
    detector.set_cls_loss(FocalLoss(gamma=plan.focal_gamma, reduction="mean"))
    # GIoU compares boxes, not offsets: decode the predicted regression, leave the ground truth as boxes
    detector.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)
    detector.set_box_selector_parameters(
        score_thresh=plan.score_threshold,
        topk_candidates_per_level=plan.topk_per_level,
        nms_thresh=plan.nms_iou,
        detections_per_img=plan.detections_per_image,
        apply_sigmoid=True,
    )
    return detector


def count_parameters(detector: RetinaNetDetector) -> int:
    """Trainable weights of the detector's network."""
    return sum(p.numel() for p in detector.network.parameters() if p.requires_grad)
