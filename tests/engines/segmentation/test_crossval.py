"""Cross-validation: every case is predicted once by the fold that held it out, and summarised."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.engines.common.msd_factory import blob_case, write_msd
from tests.engines.segmentation.test_trainer import tiny_plan
from vesalius.engines.common.package import load_package
from vesalius.engines.segmentation.crossval import choose_postprocessing, cross_validate
from vesalius.engines.segmentation.predict import Predictor
from vesalius.engines.segmentation.run_layout import stored_postprocessing
from vesalius.engines.segmentation.trainer import train_fold

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_cross_validation_predicts_each_case_once_and_summarises(tmp_path: Path) -> None:
    dataset = write_msd(
        tmp_path / "Blobs", [blob_case(f"c{n}", (24, 24, 20), (1.0, 1.0, 1.0), seed=n) for n in range(6)]
    )
    result = cross_validate(dataset, tiny_plan(dataset), tmp_path / "run", epochs=2, iterations_per_epoch=4)
    predicted = sorted(p.name for p in (tmp_path / "run" / "cv_predictions").glob("*.nii.gz"))
    assert predicted == [f"c{n}.nii.gz" for n in range(6)]
    assert result.report.missing_predictions == []
    assert sorted(result.per_fold) == [0, 1, 2]
    assert all(s["outer"].n == 2 for s in result.per_fold.values())
    assert result.report.classes[0].dice.n == 6
    summary = json.loads(result.summary_json.read_text())
    assert set(summary) == {"folds", "overall", "postprocessing"}
    assert "| fold |" in result.summary_table.read_text()
    assert stored_postprocessing(tmp_path / "run") == result.postprocessing


def test_training_on_all_cases_after_cv_ships_the_cv_figures_and_postprocessing(tmp_path: Path) -> None:
    dataset = write_msd(
        tmp_path / "Blobs", [blob_case(f"c{n}", (24, 24, 20), (1.0, 1.0, 1.0), seed=n) for n in range(6)]
    )
    plan = tiny_plan(dataset)
    run = tmp_path / "run"
    (run).mkdir()
    (run / "postprocessing.json").write_text('{"1": true}')  # as a CV would leave it
    before_cv = train_fold(dataset, plan, None, run, epochs=1, iterations_per_epoch=2)
    assert "cross_validation" not in load_package(before_cv.package).manifest.metrics
    result = cross_validate(dataset, plan, run, epochs=1, iterations_per_epoch=2)
    final = train_fold(dataset, plan, None, run, epochs=1, iterations_per_epoch=2, resume=False)
    manifest = load_package(final.package).manifest
    cv = manifest.metrics["cross_validation"]
    assert cv["overall"]["foreground_mean"]["dice"]["n"] == 6
    assert "cases" not in cv["overall"]
    kept = [value for value, on in sorted(result.postprocessing.items()) if on]
    assert manifest.postprocessing == {"keep_largest_component": kept}
    assert Predictor(load_package(final.package)).postprocessing == dict.fromkeys(kept, True)
    assert Predictor(load_package(final.package), postprocessing={}).postprocessing == {}


def test_largest_component_is_chosen_only_where_it_helps() -> None:
    reference = np.zeros((12, 12, 12), dtype=np.uint8)
    reference[2:6, 2:6, 2:6] = 1
    reference[8:11, 8:11, 8:11] = 2
    with_island = reference.copy()
    with_island[0, 11, 0] = 1  # a false-positive island of class 1
    split_class_2 = reference.copy()
    split_class_2[8:11, 8:11, 1:3] = 2  # the reference itself has class 2 in two parts
    references = {"a": split_class_2}
    predictions = {"a": np.where(with_island == 1, 1, split_class_2)}
    assert choose_postprocessing(predictions, references, [1, 2]) == {1: True, 2: False}
