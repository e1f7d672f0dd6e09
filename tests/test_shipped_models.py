"""The models we ship: intact, small, self-describing, and working on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vesalius.engines.classification.dataset import read_classification_dataset
from vesalius.engines.classification.engine import Classifier, split_items
from vesalius.engines.common.metrics.segmentation import dice
from vesalius.engines.common.package import load_package, verify_package
from vesalius.engines.segmentation.predict import Predictor
from vesalius.io import read_volume

MODELS = Path(__file__).resolve().parents[1] / "models"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPOCAMPUS_DATA = SHARED_DATA / "hippocampus"
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


CLASSIFIERS = {
    "cxr-pneumonia": "cxr-pneumonia/train",
    "breast-us": "medmnist/breastmnist.npz",
    "adrenal-3d": "medmnist/adrenalmnist3d_64.npz",
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_a_shipped_classifier_classifies_real_held_out_cases(name: str, tmp_path: Path) -> None:
    package = MODELS / name / "package"
    data = SHARED_DATA / CLASSIFIERS[name]
    assert package.is_dir(), f"models/{name} is shipped with the repository"
    if not data.exists():
        pytest.skip(f"{data} is absent")
    classifier = Classifier(package, device="cpu")
    recorded = classifier.manifest.metrics
    pattern = classifier.plan.patient_pattern
    dataset = read_classification_dataset(data, **({"patient_pattern": pattern} if pattern else {}))
    _, _, evaluation = split_items(dataset, classifier.plan, recorded["fold"], tmp_path)
    assert len(evaluation) == recorded["cases"]["evaluation"]  # the same held-out cases as at training time
    cases = evaluation[:: max(1, len(evaluation) // 48)]
    rows = classifier.probabilities([item.source for item in cases])
    predicted = [classifier.plan.class_names.index(classifier.label(row)) for row in rows]
    accuracy = np.mean([p == item.label for p, item in zip(predicted, cases, strict=True)])
    assert accuracy >= recorded["evaluation"]["metrics"]["accuracy"]["value"] - 0.15


LIDC_SERIES = SHARED_DATA / "lidc" / "LIDC-IDRI-0001"


def test_the_lung_nodule_model_records_its_held_out_figures() -> None:
    manifest = load_package(MODELS / "lung-nodules" / "package").manifest
    held_out = manifest.metrics["held_out"]
    assert held_out["held_out_side"] == "left"
    assert held_out["inserted_reduced"]["n_scans"] == manifest.plan["lung_nodules"]["data"]["held_out_scans"]
    assert len(held_out["real_nodules"]) == 1
    assert manifest.data_fingerprint["background_series"].startswith("1.3.6.1.4.1.14519.5.2.1.6279.6001")
    assert 0.0 < manifest.postprocessing["operating_point"] < 1.0


@pytest.mark.shared_data
def test_the_lung_nodule_model_scores_the_real_nodule_as_it_recorded() -> None:
    from vesalius.engines.detection.model import LungNoduleModel

    if not LIDC_SERIES.is_dir():
        pytest.skip("../shared/data/lidc is absent")
    package = MODELS / "lung-nodules" / "package"
    recorded = load_package(package).manifest.metrics["held_out"]["real_nodules"][0]
    findings = LungNoduleModel.from_package(package).find(read_volume(LIDC_SERIES))
    hits = [
        f
        for f in findings
        if np.linalg.norm(np.subtract(f.centre, recorded["centre"])) <= recorded["diameter_mm"] / 2.0
    ]
    assert bool(hits) == recorded["found"]
    if hits:
        assert max(f.probability for f in hits) == pytest.approx(recorded["probability"], abs=1e-3)
