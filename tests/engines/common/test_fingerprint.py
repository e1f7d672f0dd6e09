"""Fingerprint statistics against hand-computed values; determinism and the content hash."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.engines.common.msd_factory import FakeCase, blob_case, write_msd
from vesalius.core.errors import DatasetError
from vesalius.engines.common.dataset import read_msd_dataset
from vesalius.engines.common.fingerprint import compute_fingerprint


def _known_case(case_id: str, values: list[float], spacing: tuple[float, float, float]) -> FakeCase:
    """A 4x3x2 image of -1 with ``values`` placed in label-1 voxels along the first row."""
    image = np.full((4, 3, 2), -1.0, dtype=np.float32)
    label = np.zeros((4, 3, 2), dtype=np.uint8)
    for index, value in enumerate(values):
        image[index, 0, 0] = value
        label[index, 0, 0] = 1
    return FakeCase(case_id, image, label, spacing)


@pytest.fixture
def known(tmp_path: Path) -> Path:
    """Foreground [1, 2, 3, 4] + [10, 20] + [] over three cases of known spacing."""
    cases = [
        _known_case("c", [], (1.0, 1.0, 3.0)),
        _known_case("a", [1, 2, 3, 4], (0.5, 1.0, 2.0)),
        _known_case("b", [10, 20], (1.0, 2.0, 5.0)),
    ]
    return write_msd(tmp_path / "known", cases, modality={"0": "CT"}, labels={"0": "background", "1": "lesion"})


def test_statistics_equal_hand_computed_values(known: Path) -> None:
    fingerprint = compute_fingerprint(read_msd_dataset(known))
    stats = fingerprint.intensity[0]
    # pooled foreground [1, 2, 3, 4, 10, 20]: n = 6, sum = 40
    mean = 40 / 6
    assert stats.num_samples == 6
    assert stats.mean == pytest.approx(mean)
    assert stats.std == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in [1, 2, 3, 4, 10, 20]) / 6))
    assert stats.median == pytest.approx(3.5)
    assert (stats.min, stats.max) == (1.0, 20.0)
    # linear interpolation at rank p/100 * (n - 1): 0.025 -> 1 + 0.025 * (2 - 1); 4.975 -> 10 + 0.975 * 10
    assert stats.percentile_00_5 == pytest.approx(1.025)
    assert stats.percentile_99_5 == pytest.approx(19.75)


def test_geometry_and_labels(known: Path) -> None:
    fingerprint = compute_fingerprint(read_msd_dataset(known))
    assert [c.case_id for c in fingerprint.cases] == ["a", "b", "c"]
    assert [c.spacing for c in fingerprint.cases] == [(0.5, 1.0, 2.0), (1.0, 2.0, 5.0), (1.0, 1.0, 3.0)]
    assert all(c.shape == (4, 3, 2) for c in fingerprint.cases)
    assert fingerprint.median_spacing == (1.0, 1.0, 3.0)
    assert fingerprint.median_shape == (4.0, 3.0, 2.0)
    assert [c.label_voxels for c in fingerprint.cases] == [{0: 20, 1: 4}, {0: 22, 1: 2}, {0: 24}]
    lesion = fingerprint.label_stats[1]
    assert (lesion.name, lesion.voxels, lesion.cases_present) == ("lesion", 6, 2)
    assert lesion.fraction == pytest.approx(6 / 72)
    assert fingerprint.label_stats[0].fraction == pytest.approx(66 / 72)
    assert fingerprint.modalities == ["CT"]


def test_sampling_is_capped_and_deterministic(tmp_path: Path) -> None:
    cases = [blob_case(f"case_{i}", (16, 16, 12), (1, 1, 1), seed=i) for i in range(3)]
    dataset = read_msd_dataset(write_msd(tmp_path, cases))
    first = compute_fingerprint(dataset, max_foreground_samples=50, seed=3)
    again = compute_fingerprint(dataset, max_foreground_samples=50, seed=3)
    other = compute_fingerprint(dataset, max_foreground_samples=50, seed=4)
    assert first.intensity[0].num_samples == 150
    assert first == again
    assert first.content_hash == again.content_hash
    assert other.intensity[0].mean != first.intensity[0].mean
    assert other.content_hash != first.content_hash


def test_workers_give_the_same_fingerprint(tmp_path: Path) -> None:
    cases = [blob_case(f"case_{i}", (10, 12, 8), (1, 1, 1.5), seed=i) for i in range(4)]
    dataset = read_msd_dataset(write_msd(tmp_path, cases))
    one = compute_fingerprint(dataset, max_foreground_samples=20)
    assert compute_fingerprint(dataset, workers=2, max_foreground_samples=20) == one


def test_hash_ignores_listing_order_and_location(known: Path, tmp_path: Path) -> None:
    reference = compute_fingerprint(read_msd_dataset(known)).content_hash
    moved = known.rename(tmp_path / "elsewhere")
    content = json.loads((moved / "dataset.json").read_text())
    content["training"].reverse()
    (moved / "dataset.json").write_text(json.dumps(content))
    assert compute_fingerprint(read_msd_dataset(moved)).content_hash == reference


def test_hash_follows_the_voxels(known: Path) -> None:
    reference = compute_fingerprint(read_msd_dataset(known)).content_hash
    edited = _known_case("a", [1, 2, 3, 5], (0.5, 1.0, 2.0))
    nib.save(nib.Nifti1Image(edited.image, np.diag([0.5, 1.0, 2.0, 1.0])), known / "imagesTr" / "a.nii.gz")
    assert len(reference) == 64
    assert compute_fingerprint(read_msd_dataset(known)).content_hash != reference


def test_one_statistics_entry_per_channel(tmp_path: Path) -> None:
    case = _known_case("a", [1, 2, 3], (1.0, 1.0, 1.0))
    case.image = np.stack([case.image, 10 * case.image], axis=-1)
    dataset = read_msd_dataset(write_msd(tmp_path, [case], modality={"0": "T2", "1": "ADC"}))
    fingerprint = compute_fingerprint(dataset)
    assert [s.mean for s in fingerprint.intensity] == pytest.approx([2.0, 20.0])


def test_no_foreground_at_all(tmp_path: Path) -> None:
    dataset = read_msd_dataset(write_msd(tmp_path, [_known_case("a", [], (1.0, 1.0, 1.0))]))
    with pytest.raises(DatasetError, match="no label holds a foreground voxel"):
        compute_fingerprint(dataset)
