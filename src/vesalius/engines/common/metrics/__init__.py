"""Metrics as pure functions of arrays (segmentation overlap and surface distances) and their summaries."""

from vesalius.engines.common.metrics.segmentation import (
    ClassMetrics,
    binary_metrics,
    dice,
    hausdorff95,
    per_class_metrics,
    surface_dice,
)
from vesalius.engines.common.metrics.summary import Summary, summarize

__all__ = [
    "ClassMetrics",
    "Summary",
    "binary_metrics",
    "dice",
    "hausdorff95",
    "per_class_metrics",
    "summarize",
    "surface_dice",
]
