"""What every trainer shares: the learning-rate schedule and the precision it trains in."""

from __future__ import annotations

import itertools

import pytest
import torch

from vesalius.engines.common.precision import autocast_dtype, training_dtype
from vesalius.engines.common.schedule import warmup_cosine


def test_warm_up_rises_linearly_then_cosine_decays_to_zero() -> None:
    factors = [warmup_cosine(step, 4, 20) for step in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0)
    assert factors[12] == pytest.approx(0.5)  # half-way through the decay
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)
    assert warmup_cosine(0, 0, 10) == pytest.approx(1.0)  # no warm-up


def test_3d_networks_train_in_float32_on_the_cpu_unless_asked_otherwise() -> None:
    cpu = torch.device("cpu")
    assert training_dtype(cpu, "auto", 3) is None
    assert training_dtype(cpu, "bf16", 3) == torch.bfloat16
    assert training_dtype(cpu, "auto", 2) == autocast_dtype(cpu, "auto")
