"""End to end: plan, train a fold, calibrate and choose the operating point on selection data, report on
held-out data, package, and predict a CSV for files and .npz arrays."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vesalius.core.errors import InputError
from vesalius.engines.classification.dataset import ImageSource, read_classification_dataset, read_medmnist
from vesalius.engines.classification.engine import (
    Classifier,
    fit_classifier,
    plan_classification,
    predict_classification,
    split_items,
)
from vesalius.engines.classification.plan import ClassificationPlan
from vesalius.engines.common.metrics.classification import classification_report
from vesalius.engines.common.package import load_package

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def toy_image(label: int, rng: np.random.Generator) -> np.ndarray:
    image = rng.normal(100, 20, (40, 40))
    row = 6 + 20 * label
    image[row : row + 12, 14:26] += 80
    return np.clip(image, 0, 255).astype(np.uint8)


def class_folders(root: Path, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for label, name in enumerate(["NORMAL", "PNEUMONIA"]):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(toy_image(label, rng)).save(root / name / f"person{index}_{name}_{label}.png")
    return root


def small(plan: ClassificationPlan) -> ClassificationPlan:
    network = plan.network.model_copy(update={"architecture": "resnet10", "width": 0.25})
    return plan.model_copy(update={"network": network, "epochs": 4, "batch_size": 16, "learning_rate": 3e-3})


def test_a_fold_is_trained_calibrated_reported_and_packaged(tmp_path: Path) -> None:
    data = class_folders(tmp_path / "cxr")
    options = {"patient_pattern": r"(?P<patient>person\d+)_"}
    dataset = read_classification_dataset(data, **options)
    plan = small(plan_classification(dataset, patient_pattern=options["patient_pattern"]))
    assert plan.input_size == [48, 48]
    assert plan.patient_pattern == options["patient_pattern"]  # kept, so the split can be rebuilt from the plan
    training, selection, evaluation = split_items(dataset, plan, 0, tmp_path / "run")
    patients = [{item.patient_id for item in part} for part in (training, selection, evaluation)]
    assert not (patients[0] & patients[1])
    assert not (patients[0] & patients[2])
    assert not (patients[1] & patients[2])
    result = fit_classifier(data, plan, 0, tmp_path / "run", device="cpu")  # grouped by the plan's pattern
    manifest = load_package(result.package).manifest
    assert manifest.task == "classification"
    evaluation_auc = manifest.metrics["evaluation"]["metrics"]["auc"]
    assert evaluation_auc["value"] > 0.9
    assert evaluation_auc["ci_low"] <= evaluation_auc["value"] <= evaluation_auc["ci_high"]
    assert manifest.metrics["cases"]["evaluation"] == len(evaluation)
    assert manifest.postprocessing["temperature"] > 0
    assert 0 <= manifest.postprocessing["threshold"] <= 1
    assert "ece_after" in manifest.metrics["calibration"]
    for name in ("roc.png", "confusion.png", "reliability.png", "training_curves.png", "evaluation.md"):
        assert (result.run_dir / name).stat().st_size > 0
    # the recorded figures are those of the shipped (float16) weights: predicting again reproduces them exactly
    classifier = Classifier(result.package, device="cpu")
    again = classifier.probabilities([item.source for item in evaluation])
    recorded = manifest.metrics["evaluation"]["metrics"]
    labels = np.asarray([item.label for item in evaluation])
    report = classification_report(labels, again, plan.kind, plan.class_names, classifier.threshold)
    for metric in ("auc", "accuracy", "sensitivity", "specificity"):
        assert report.metrics[metric].value == recorded[metric]["value"]

    image = data / "PNEUMONIA" / "person3_PNEUMONIA_1.png"
    written = predict_classification(result.package, [image, data / "NORMAL"], tmp_path / "out", device="cpu")
    assert written == tmp_path / "out" / "predictions.csv"
    rows = list(csv.DictReader(written.open()))
    assert len(rows) == 41  # the image, then each of the 40 images in the NORMAL folder
    assert rows[0]["predicted"] == "PNEUMONIA"
    normal = sum(row["predicted"] == "NORMAL" for row in rows[1:])
    assert normal >= 36


def test_predictions_csv_has_a_row_per_input_and_per_npz_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 84)
    images = np.stack([toy_image(int(label), rng)[:28, :28] for label in labels])
    np.savez(
        tmp_path / "toy.npz",
        train_images=images[:70],
        train_labels=labels[:70, None],
        val_images=images[70:],
        val_labels=labels[70:, None],
    )
    dataset = read_medmnist(tmp_path / "toy.npz")
    plan = small(plan_classification(dataset))
    result = fit_classifier(tmp_path / "toy.npz", plan, "official", tmp_path / "run", device="cpu", epochs=2)
    assert result.metrics["cases"]["evaluation"] == 14
    out = predict_classification(result.package, [tmp_path / "toy.npz"], tmp_path / "out", device="cpu")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 84
    assert rows[0]["input"].endswith("toy.npz:train_images:0")
    assert rows[-1]["input"].endswith("toy.npz:val_images:13")
    assert set(rows[0]) == {"input", "predicted", "p_0", "p_1"}
    assert all(abs(float(r["p_0"]) + float(r["p_1"]) - 1) < 1e-4 for r in rows)
    with pytest.raises(InputError, match="no such file"):
        predict_classification(result.package, [tmp_path / "gone.png"], tmp_path / "out", device="cpu")


def test_grey_images_stored_as_rgb_plan_one_channel_and_a_split_folder_takes_its_parents_name(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    data = tmp_path / "chest" / "train"
    for label, name in enumerate(["NORMAL", "PNEUMONIA"]):
        (data / name).mkdir(parents=True)
        for index in range(4):
            grey = toy_image(label, rng)
            Image.fromarray(np.stack([grey] * 3, axis=-1)).save(data / name / f"{index}.jpeg", quality=90)
    dataset = read_classification_dataset(data)
    assert dataset.name == "chest"
    assert plan_classification(dataset).channels == 1
    colour = tmp_path / "colour"
    for name in ["a", "b"]:
        (colour / name).mkdir(parents=True)
        for index in range(4):
            rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(colour / name / f"{index}.png")
    assert plan_classification(read_classification_dataset(colour)).channels == 3


def test_a_plan_with_flips_averages_predictions_over_them_so_mirrored_images_score_alike(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 60)
    images = np.stack([toy_image(int(label), rng)[:28, :28] for label in labels])
    images[:, :, :10] = 0  # left-right asymmetric, so an unflipped prediction would differ from its mirror
    np.savez(tmp_path / "toy.npz", train_images=images[:50], train_labels=labels[:50, None],
             val_images=images[50:], val_labels=labels[50:, None])  # fmt: skip
    plan = small(plan_classification(read_medmnist(tmp_path / "toy.npz"), flip_axes=[1]))
    assert plan.tta_flips
    result = fit_classifier(tmp_path / "toy.npz", plan, "official", tmp_path / "run", device="cpu", epochs=1)
    pair = tmp_path / "pair.npz"
    np.savez(pair, test_images=np.stack([images[0], images[0][:, ::-1]]), test_labels=np.zeros((2, 1), int))
    classifier = Classifier(result.package, device="cpu")
    sources = [ImageSource(pair, "test_images", 0), ImageSource(pair, "test_images", 1)]
    original, mirrored = classifier.probabilities(sources)
    np.testing.assert_allclose(original, mirrored, atol=1e-5)
    no_tta = Classifier(result.package, device="cpu")
    no_tta.plan = no_tta.plan.model_copy(update={"tta_flips": False})
    plain, plain_mirrored = no_tta.probabilities(sources)
    assert not np.allclose(plain, plain_mirrored, atol=1e-5)
