"""Learning-rate schedules shared by the trainers."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The factor on the base learning rate at ``step`` (from 0): a linear warm-up over ``warmup_steps``, which
    keeps AdamW's first updates small while its moment estimates settle, then cosine decay to zero at
    ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))
