"""What a trainer accepts beside the labels: a second training signal, such as a teacher's soft targets.

The trainers stay ignorant of where the signal comes from (``vesalius.deploy.distill`` implements it), so one
loop trains plain models, distilled students and pruned models being fine-tuned.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Guidance(Protocol):
    def attach(self, network: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Called once with the network about to be trained; returns extra parameters to optimise with it."""
        ...

    def loss(self, images: torch.Tensor, outputs: torch.Tensor, supervised: torch.Tensor) -> torch.Tensor:
        """The loss to minimise for one batch, given the network's main output and the supervised loss."""
        ...
