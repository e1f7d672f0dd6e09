"""Untrained classification packages for tests: a plan in, a package folder out, weights seeded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vesalius.engines.classification.networks import ClassificationNetwork
from vesalius.engines.classification.plan import ClassificationPlan
from vesalius.engines.common.package import save_package


def random_classifier_package(
    folder: Path,
    plan: ClassificationPlan,
    *,
    seed: int = 0,
    postprocessing: Mapping[str, Any] | None = None,
    weights_dtype: torch.dtype | None = None,
    jitter_batch_norm: bool = False,
) -> Path:
    """The plan's network with seeded random weights as a package. ``jitter_batch_norm`` moves the BatchNorm
    statistics away from (0, 1), so that a test can tell eval mode from train mode."""
    torch.manual_seed(seed)
    network = ClassificationNetwork.build(plan.network)
    if jitter_batch_norm:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.uniform_(-0.5, 0.5)
                assert module.running_var is not None
                module.running_var.uniform_(0.5, 2.0)
    return save_package(
        folder,
        name=plan.dataset_name.lower(),
        version="0.1.0",
        task="classification",
        labels=dict(enumerate(plan.class_names)),
        plan=plan,
        metrics={},
        data_fingerprint={},
        state_dict=network.state_dict(),
        postprocessing=postprocessing,
        weights_dtype=weights_dtype,
    )
