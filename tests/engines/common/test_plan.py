"""Planning rules (nnU-Net's, re-derived), the plan file round trip, and the network the plan builds."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engines.common.msd_factory import blob_case, write_msd
from vesalius.core.errors import PlanFileError
from vesalius.engines.common.dataset import read_msd_dataset
from vesalius.engines.common.fingerprint import DatasetFingerprint, compute_fingerprint
from vesalius.engines.common.plan import (
    MIN_FEATURE_MAP,
    VOXELS_PER_GB,
    CTNormalization,
    SegmentationPlan,
    ZScoreNormalization,
    make_plan,
    plan_dataset,
)

STATS = {"mean": 0.0, "std": 1.0, "median": 0.0, "min": -1.0, "max": 1.0}
STATS |= {"percentile_00_5": -1.0, "percentile_99_5": 1.0, "num_samples": 10}


def fingerprint_of(
    spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]], modality: str = "MRI"
) -> DatasetFingerprint:
    """A fingerprint with the given geometry, without writing any file."""
    cases = [
        {"case_id": f"c{i:03d}", "spacing": sp, "shape": sh, "label_voxels": {0: 1, 1: 1}, "file_bytes": 1}
        for i, (sp, sh) in enumerate(zip(spacings, shapes, strict=True))
    ]
    label_stats = {v: {"name": n, "voxels": 1, "fraction": 0.5, "cases_present": 1} for v, n in [(0, "bg"), (1, "fg")]}
    return DatasetFingerprint.model_validate(
        {
            "dataset_name": "Synthetic",
            "modalities": [modality],
            "labels": {0: "bg", 1: "fg"},
            "cases": cases,
            "intensity": [STATS],
            "label_stats": label_stats,
            "median_spacing": tuple(np.median(spacings, axis=0)),
            "median_shape": tuple(np.median(shapes, axis=0)),
            "content_hash": "0" * 64,
        }
    )


ANISO_Z = [5.0, 5.0, 4.0, 6.0, 3.0, 5.0, 5.0, 2.5, 5.0, 4.5]


@pytest.fixture
def anisotropic() -> DatasetFingerprint:
    """0.7 x 0.7 x ~5 mm, 256 x 256 x ~25 voxels."""
    return fingerprint_of([(0.7, 0.7, z) for z in ANISO_Z], [(256, 256, int(125 / z)) for z in ANISO_Z])


def divisor(plan: SegmentationPlan) -> np.ndarray:
    return np.asarray(plan.network.divisor)


def check_invariants(plan: SegmentationPlan, fingerprint: DatasetFingerprint, budget_voxels: int) -> None:
    strides = np.array(plan.network.strides)
    patch = np.array(plan.patch_size)
    assert tuple(strides[0]) == (1, 1, 1)
    assert np.all(patch % divisor(plan) == 0)
    assert np.all(patch / divisor(plan) >= MIN_FEATURE_MAP), "an axis is pooled below 4 voxels"
    resampled = fingerprint.shapes * fingerprint.spacings / np.array(plan.target_spacing)
    median_rounded = np.ceil(np.maximum(np.median(resampled, axis=0), 1) / divisor(plan)) * divisor(plan)
    assert np.all(patch <= median_rounded)
    assert np.prod(patch) <= budget_voxels // 2
    assert plan.batch_size >= 2
    assert plan.batch_size * np.prod(patch) <= budget_voxels


def test_isotropic_target_spacing_is_the_median() -> None:
    spacings = [(1.0, 1.0, 1.0), (1.2, 0.9, 1.1), (0.8, 1.0, 1.3)]
    plan = make_plan(fingerprint_of(spacings, [(64, 64, 64)] * 3))
    assert plan.target_spacing == (1.0, 1.0, 1.1)
    assert not plan.anisotropic
    assert plan.anisotropic_axis is None
    assert plan.augmentation.rotation_degrees == (30.0, 30.0, 30.0)


def test_anisotropic_axis_takes_the_10th_percentile(anisotropic: DatasetFingerprint) -> None:
    plan = make_plan(anisotropic)
    assert plan.anisotropic
    assert plan.anisotropic_axis == 2
    assert plan.target_spacing == pytest.approx((0.7, 0.7, float(np.percentile(ANISO_Z, 10))))
    assert plan.augmentation.rotation_degrees == (0.0, 0.0, 180.0)


def test_coarse_spacing_with_many_slices_is_not_anisotropic() -> None:
    """nnU-Net's second condition: the coarse axis must also hold under a third of the others' voxels."""
    plan = make_plan(fingerprint_of([(0.7, 0.7, z) for z in ANISO_Z], [(96, 96, 64)] * len(ANISO_Z)))
    assert not plan.anisotropic
    assert plan.target_spacing == (0.7, 0.7, 5.0)


def test_coarse_axis_is_not_pooled_first(anisotropic: DatasetFingerprint) -> None:
    plan = make_plan(anisotropic)
    strides, kernels = plan.network.strides, plan.network.kernel_size
    assert strides[1] == (2, 2, 1)
    assert kernels[0] == (3, 3, 1)
    assert any(s[2] == 2 for s in strides), "the coarse axis is pooled once the others catch up"
    check_invariants(plan, anisotropic, 8 * VOXELS_PER_GB)


def test_memory_budget_limits_the_patch(anisotropic: DatasetFingerprint) -> None:
    small = make_plan(anisotropic, memory_budget_gb=0.5)
    large = make_plan(anisotropic, memory_budget_gb=8.0)
    assert np.prod(small.patch_size) < np.prod(large.patch_size)
    check_invariants(small, anisotropic, int(0.5 * VOXELS_PER_GB))
    assert make_plan(anisotropic, voxel_budget=2 * 64**3).memory_budget_gb == pytest.approx(1.0)


def test_batch_grows_to_cover_five_percent() -> None:
    many = make_plan(fingerprint_of([(1, 1, 1)] * 400, [(32, 32, 32)] * 400))
    assert many.patch_size == (32, 32, 32)
    assert many.batch_size == int(0.05 * 400)  # 5 % of 400 cases of one patch each
    few = make_plan(fingerprint_of([(1, 1, 1)] * 4, [(32, 32, 32)] * 4))
    assert few.batch_size == 2


@settings(max_examples=60, deadline=None)
@given(
    spacing=st.tuples(*[st.sampled_from([0.5, 0.7, 0.8, 1.0, 1.5, 2.5, 3.0, 5.0])] * 3),
    shape=st.tuples(*[st.integers(16, 400)] * 3),
    gb=st.sampled_from([1.0, 4.0, 8.0, 24.0]),
)
def test_plan_invariants_hold(spacing: tuple[float, ...], shape: tuple[int, ...], gb: float) -> None:
    fingerprint = fingerprint_of([spacing] * 3, [shape] * 3)
    plan = make_plan(fingerprint, memory_budget_gb=gb)
    check_invariants(plan, fingerprint, int(gb * VOXELS_PER_GB))
    for stage, stride in enumerate(plan.network.strides[1:], start=1):
        spacing_before = np.array(plan.target_spacing) * np.prod(plan.network.strides[:stage], axis=0)
        coarse = spacing_before > 2 * spacing_before.min() * (1 + 1e-6)
        assert not np.any(coarse & (np.array(stride) == 2)), "a too-coarse axis was pooled"


def test_ct_and_mr_normalization(tmp_path: Path) -> None:
    cases = [blob_case(f"ct_{i}", (24, 24, 16), (1, 1, 1), seed=i) for i in range(3)]
    ct_dataset = read_msd_dataset(write_msd(tmp_path / "ct", cases, modality={"0": "CT"}))
    fingerprint = compute_fingerprint(ct_dataset)
    (ct,) = make_plan(fingerprint).normalization
    stats = fingerprint.intensity[0]
    assert ct == CTNormalization(clip=(stats.percentile_00_5, stats.percentile_99_5), mean=stats.mean, std=stats.std)
    mr_dataset = read_msd_dataset(write_msd(tmp_path / "mr", cases, modality={"0": "MRI"}))
    assert make_plan(compute_fingerprint(mr_dataset)).normalization == [ZScoreNormalization()]


def test_plan_json_round_trip(tmp_path: Path, anisotropic: DatasetFingerprint) -> None:
    plan = make_plan(anisotropic)
    file = plan.save(tmp_path / "plan.json")
    assert SegmentationPlan.load(file) == plan
    text = file.read_text()
    assert '"patch_size": [' + ", ".join(str(p) for p in plan.patch_size) + "]" in text, "number lists stay on one line"
    assert json.loads(text)["plan_version"] == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(batch_size=0), r"batch_size: Input should be greater than or equal to 1"),
        (lambda d: d.update(patch_size=[41, 56, 40]), r"patch_size \[41, 56, 40\] must be divisible by"),
        (lambda d: d["optimizer"].update(learning_rate=0.1), r"optimizer\.learning_rate: Extra inputs"),
        (lambda d: d["normalization"][0].update(scheme="minmax"), r"normalization\.0: Input tag 'minmax'"),
        (lambda d: d.update(plan_version=2), r"plan_version 2 is not supported"),
        (lambda d: d["network"]["strides"].__setitem__(0, [2, 1, 1]), r"network\.strides\[0\] must be \[1, 1, 1\]"),
    ],
)
def test_hand_edited_invalid_field(
    tmp_path: Path, anisotropic: DatasetFingerprint, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    file = make_plan(anisotropic).save(tmp_path / "plan.json")
    content = json.loads(file.read_text())
    edit(content)
    file.write_text(json.dumps(content, indent=2))
    with pytest.raises(PlanFileError, match=str(file).replace(".", r"\.") + r": invalid plan: .*" + message):
        SegmentationPlan.load(file)


def test_broken_json_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "plan.json"
    broken.write_text('{"plan_version": 1,')
    with pytest.raises(PlanFileError, match=r"plan\.json: invalid plan: Invalid JSON"):
        SegmentationPlan.load(broken)
    with pytest.raises(PlanFileError, match=r"absent\.json: cannot read the plan"):
        SegmentationPlan.load(tmp_path / "absent.json")


@pytest.mark.parametrize("geometry", ["isotropic", "anisotropic"])
def test_plan_builds_a_dynunet(geometry: str, anisotropic: DatasetFingerprint) -> None:
    fingerprint = anisotropic if geometry == "anisotropic" else fingerprint_of([(1, 1, 1)] * 3, [(40, 48, 36)] * 3)
    plan = make_plan(fingerprint, memory_budget_gb=0.25)
    network = plan.network.build()
    x = torch.zeros((1, plan.network.in_channels, *plan.patch_size))
    network.train()
    with torch.no_grad():
        heads = network(x)
    assert heads.shape == (1, plan.network.deep_supr_num + 1, plan.num_classes, *plan.patch_size)
    network.eval()
    with torch.no_grad():
        assert network(x).shape == (1, plan.num_classes, *plan.patch_size)


@pytest.mark.shared_data
def test_hippocampus_plan(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "hippocampus"
    if not (folder / "dataset.json").is_file():
        pytest.skip(f"{folder} is absent")
    fingerprint, plan = plan_dataset(folder)
    assert len(fingerprint.cases) == 208
    assert plan.target_spacing == (1.0, 1.0, 1.0)
    assert plan.num_classes == 3
    assert plan.normalization == [ZScoreNormalization()]
    assert all(abs(p - m) <= 8 for p, m in zip(plan.patch_size, (40, 56, 40), strict=True))
    assert plan.batch_size >= 2
    assert plan.network.strides[1:] == [(2, 2, 2)] * (len(plan.network.strides) - 1)
    assert SegmentationPlan.load(plan.save(tmp_path / "plan.json")) == plan
