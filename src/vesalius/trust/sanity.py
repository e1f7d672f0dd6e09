"""Sanity check of an explanation method: model-parameter randomisation (Adebayo et al. 2018).

A map that explains the model must change when the model's learned weights are replaced by random ones. If
the trained and the randomised model give maps of similar rank order, the method shows the input (edges,
bright spots), not what the network learned. Gradient-times-input methods such as integrated gradients are
known to fail this on inputs that dominate the product; Grad-CAM passes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import spearmanr
from torch import nn

from vesalius.trust.explain import Target, explain

__all__ = ["SanityReport", "parameter_randomisation_check", "randomised_copy"]

NORMAL_INIT_STD = 0.02


def _cached_activations(model: nn.Module) -> dict[int, Any]:
    """A deepcopy memo that copies activations a module kept from its last forward pass as detached tensors.

    MONAI's DynUNet keeps its deep-supervision outputs in a list on the module; after a forward pass with
    gradients they are graph tensors, which ``copy.deepcopy`` refuses to copy.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            for item in value if isinstance(value, list | tuple) else (value,):
                if isinstance(item, torch.Tensor) and not item.is_leaf:
                    memo[id(item)] = item.detach()
    return memo


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy with every learnable parameter drawn afresh and BatchNorm's running statistics reset.

    Modules with ``reset_parameters`` use it (their own initialisation); parameters of modules without it are
    drawn from N(0, 0.02^2). The global random state is left as it was.
    """
    randomised = copy.deepcopy(model, _cached_activations(model))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in randomised.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                for parameter in module.parameters(recurse=False):
                    parameter.normal_(0.0, NORMAL_INIT_STD)
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
    return randomised


class SanityReport(BaseModel):
    """Outcome of one randomisation check: passed means the map changed when the weights were randomised."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = Field(description="Explanation method checked")
    spearman: float = Field(description="Rank correlation of the trained and the randomised model's maps")
    threshold: float = Field(default=0.5, gt=0, le=1, description="spearman below this passes")
    passed: bool = Field(
        description="spearman < threshold: the map changed with the weights (an anti-correlated map changed too)"
    )
    n_values: int = Field(ge=0, description="Voxels compared")
    note: str | None = Field(default=None, description="Why the correlation was set rather than computed")


def parameter_randomisation_check(
    model: nn.Module,
    image: torch.Tensor,
    target: Target,
    method: str,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    **explain_kwargs: Any,
) -> SanityReport:
    """Explain ``target`` with the trained model and with ``randomised_copy(model, seed)``; compare the maps'
    rank order (Spearman). A constant map has no rank order: its correlation is reported as 0, with a note."""
    trained = explain(model, image, target, method, **explain_kwargs).ravel()
    random_model = randomised_copy(model, seed)
    randomised = explain(random_model, image, target, method, **explain_kwargs).ravel()
    note = None
    if np.ptp(trained) == 0 or np.ptp(randomised) == 0:
        which = "trained" if np.ptp(trained) == 0 else "randomised"
        rho, note = 0.0, f"the {which} model's map is constant, so it has no rank order; spearman set to 0"
    else:
        rho = float(spearmanr(trained, randomised).statistic)
        if not math.isfinite(rho):
            rho, note = 0.0, "spearman was undefined; set to 0"
    return SanityReport(
        method=method,
        spearman=rho,
        threshold=threshold,
        passed=rho < threshold,
        n_values=int(trained.size),
        note=note,
    )
