"""The models we ship: intact, small, self-describing, and working on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vesalius.engines.common.metrics.segmentation import dice
from vesalius.engines.common.package import load_package, verify_package
from vesalius.engines.segmentation.predict import Predictor
from vesalius.io import read_volume

MODELS = Path(__file__).resolve().parents[1] / "models"
HIPPOCAMPUS_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hippocampus"
LIMIT_BYTES = 25 * 1024 * 1024

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("package", sorted(MODELS.glob("*/package")), ids=lambda p: p.parent.name)
def test_every_shipped_package_verifies_and_fits_the_size_limit(package: Path) -> None:
    assert verify_package(package) == []
    assert sum(f.stat().st_size for f in package.iterdir()) < LIMIT_BYTES
    manifest = load_package(package).manifest
    assert manifest.data_fingerprint, "a shipped model names the data it was trained on"
    assert manifest.metrics, "a shipped model carries its training metrics"
    assert (package.parent / "README.md").is_file()


def test_the_hippocampus_model_carries_its_cross_validation() -> None:
    manifest = load_package(MODELS / "hippocampus" / "package").manifest
    classes = {c["name"]: c["dice"] for c in manifest.metrics["cross_validation"]["overall"]["classes"]}
    assert classes["Anterior"]["n"] == 208
    assert classes["Anterior"]["mean"] > 0.8
    assert classes["Posterior"]["mean"] > 0.8
    assert manifest.postprocessing["keep_largest_component"] == [1, 2]


@pytest.mark.shared_data
def test_the_hippocampus_model_segments_a_real_case_on_its_grid() -> None:
    if not HIPPOCAMPUS_DATA.is_dir():
        pytest.skip("../shared/data/hippocampus is absent")
    image = read_volume(HIPPOCAMPUS_DATA / "imagesTr" / "hippocampus_003.nii.gz")
    label = read_volume(HIPPOCAMPUS_DATA / "labelsTr" / "hippocampus_003.nii.gz")
    predicted = Predictor(load_package(MODELS / "hippocampus" / "package"), tta=False).predict(image)
    assert predicted.shape == image.shape
    assert np.array_equal(predicted.affine, image.affine)
    for value in (1, 2):
        assert dice(predicted.array == value, label.array == value) > 0.8  # a training case: a working check only
