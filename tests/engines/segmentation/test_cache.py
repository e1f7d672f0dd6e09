"""The preprocessed-case cache: computed once, read back identical, never stale."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.engines.common.msd_factory import blob_case, write_msd
from tests.engines.segmentation.test_trainer import tiny_plan
from vesalius.engines.common.dataset import read_msd_dataset
from vesalius.engines.segmentation import cache as cache_module
from vesalius.engines.segmentation.cache import cache_key, preprocessed_arrays


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "Blobs", [blob_case(f"c{n}", (20, 18, 16), (1.0, 1.0, 1.5), seed=n) for n in range(2)])


def test_a_cached_case_is_read_back_without_preprocessing_again(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msd = read_msd_dataset(dataset)
    plan = tiny_plan(dataset)
    first = preprocessed_arrays(msd, msd.cases[0], plan, tmp_path / "cache")
    calls: list[str] = []
    original = cache_module.preprocess_case
    monkeypatch.setattr(cache_module, "preprocess_case", lambda *a: calls.append("x") or original(*a))
    second = preprocessed_arrays(msd, msd.cases[0], plan, tmp_path / "cache")
    assert calls == []
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert second[0].dtype == np.float32
    assert len(list((tmp_path / "cache").glob("c0.*.npy"))) == 2
    assert not list((tmp_path / "cache").glob(".*tmp"))


def test_the_key_changes_with_the_plan_and_with_the_files(dataset: Path) -> None:
    msd = read_msd_dataset(dataset)
    plan = tiny_plan(dataset)
    case = msd.cases[0]
    key = cache_key(case, plan)
    assert cache_key(case, plan) == key
    assert cache_key(case, plan.model_copy(update={"target_spacing": (2.0, 2.0, 2.0)})) != key
    stat = case.label.stat()
    os.utime(case.label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache_key(case, plan) != key
