"""`vesalius plan / train / predict / evaluate` on a classification dataset (a MedMNIST-style .npz)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.engines.classification.test_engine import toy_image
from vesalius.cli.main import app
from vesalius.engines.classification.plan import ClassificationPlan

runner = CliRunner()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_plan_train_predict_evaluate(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 90)
    images = np.stack([toy_image(int(label), rng)[:28, :28] for label in labels])
    data = tmp_path / "toy.npz"
    np.savez(
        data,
        train_images=images[:70],
        train_labels=labels[:70, None],
        val_images=images[70:],
        val_labels=labels[70:, None],
    )
    options = ["--architecture", "resnet10", "--width", "0.25", "--batch-size", "16", "--input-size", "48"]
    options += ["--set", "label_smoothing=0.1"]
    planned = runner.invoke(app, ["plan", str(data), *options, "--flip-axis", "1", "-o", str(tmp_path / "plan.json")])
    assert planned.exit_code == 0, planned.output
    assert "toy: 90 images" in planned.output
    plan = ClassificationPlan.load(tmp_path / "plan.json")
    assert (plan.network.architecture, plan.network.width, plan.batch_size) == ("resnet10", 0.25, 16)
    assert (plan.input_size, plan.augmentation.flip_axes, plan.tta_flips) == ([48, 48], [1], True)
    assert plan.label_smoothing == 0.1

    arguments = ["train", str(data), "--fold", "official", "--plan", str(tmp_path / "plan.json")]
    trained = runner.invoke(app, [*arguments, "-o", str(tmp_path / "run"), "--epochs", "2", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    assert "| auc |" in trained.output
    package = tmp_path / "run" / "official" / "model"

    predicted = runner.invoke(app, ["predict", str(package), str(data), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert predicted.exit_code == 0, predicted.output
    threshold = json.loads((package / "package.json").read_text())["postprocessing"]["threshold"]
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "out" / "predictions.csv"),
            str(data),
            "-o",
            str(tmp_path / "eval"),
            "--threshold",
            str(threshold),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["n"] == 90
    assert report["threshold"] == pytest.approx(threshold)

    bad = runner.invoke(app, ["train", str(data), "--fold", "cv", "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0
    assert "official" in bad.output
