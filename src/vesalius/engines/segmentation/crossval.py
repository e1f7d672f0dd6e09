"""K-fold cross-validation of a segmentation plan: train every fold, predict its held-out cases on their
original grids, choose post-processing from the results, and summarise per fold and overall.

Post-processing is chosen as nnU-Net does: keeping only the largest connected component of a class is
switched on when it raises that class's mean cross-validation Dice. The choice is stored beside the folds
(``postprocessing.json``) so ``vesalius predict RUN_DIR`` applies it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vesalius.engines.common.cv import load_or_make_split
from vesalius.engines.common.dataset import load_case, read_msd_dataset
from vesalius.engines.common.evaluate import EvaluationReport, evaluate_folders
from vesalius.engines.common.metrics.segmentation import dice
from vesalius.engines.common.metrics.summary import Summary, summarize
from vesalius.engines.common.package import load_package
from vesalius.engines.common.plan import SegmentationPlan
from vesalius.engines.common.precision import pick_device
from vesalius.engines.segmentation.predict import Predictor, keep_largest_component
from vesalius.engines.segmentation.run_layout import CV_SUMMARY, POSTPROCESSING
from vesalius.engines.segmentation.trainer import Progress, train_fold
from vesalius.io import write_nifti


@dataclass
class CrossValidationResult:
    report: EvaluationReport
    per_fold: dict[int, dict[str, Summary]]
    postprocessing: dict[int, bool]
    summary_json: Path
    summary_table: Path


def choose_postprocessing(
    predictions: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], classes: list[int]
) -> dict[int, bool]:
    """Per class: keep its largest component only if that raises its mean Dice over the cases."""
    choice = {}
    for value in classes:
        plain = [dice(predictions[c] == value, references[c] == value) for c in references]
        kept = [
            dice(keep_largest_component(predictions[c], [value]) == value, references[c] == value) for c in references
        ]
        choice[value] = float(np.mean(kept)) > float(np.mean(plain))
    return choice


def _fold_table(per_fold: dict[int, dict[str, Summary]]) -> str:
    names = sorted({name for summaries in per_fold.values() for name in summaries})
    lines = ["| fold | " + " | ".join(f"Dice {n}" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for fold, summaries in sorted(per_fold.items()):
        cells = [summaries[n].format(3) if n in summaries else "n/a" for n in names]
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cross_validate(
    dataset_dir: Path | str,
    plan: SegmentationPlan,
    output_dir: Path | str,
    *,
    device: str = "auto",
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    precision: str = "auto",
) -> CrossValidationResult:
    """Train all folds (each resumes its checkpoint), predict held-out cases, choose post-processing, summarise."""
    dataset = read_msd_dataset(dataset_dir)
    output = Path(output_dir)
    target = pick_device(device)
    predictions: dict[str, np.ndarray] = {}
    references: dict[str, np.ndarray] = {}
    volumes: dict[str, Any] = {}
    fold_of: dict[str, int] = {}
    by_id = {case.case_id: case for case in dataset.cases}
    split = load_or_make_split(output / "splits.json", list(by_id), plan.training.folds, plan.training.seed)
    for fold in range(plan.training.folds):
        result = train_fold(
            dataset_dir,
            plan,
            fold,
            output,
            device=device,
            epochs=epochs,
            iterations_per_epoch=iterations_per_epoch,
            workers=workers,
            progress=progress,
            precision=precision,
        )
        predictor = Predictor(load_package(result.package), device=target, tta=True, precision=precision)
        for case_id in split.fold(fold).validation:
            loaded = load_case(dataset, by_id[case_id])
            labels = predictor.predict(loaded.image)
            predictions[case_id], references[case_id] = labels.array, loaded.label.array
            volumes[case_id], fold_of[case_id] = labels, fold

    classes = sorted(value for value in plan.labels if value != 0)
    postprocessing = choose_postprocessing(predictions, references, classes)
    (output / POSTPROCESSING).write_text(json.dumps({str(k): v for k, v in postprocessing.items()}, indent=2) + "\n")
    prediction_dir = output / "cv_predictions"
    kept = [value for value, on in postprocessing.items() if on]
    for case_id, volume in volumes.items():
        array = keep_largest_component(predictions[case_id], kept) if kept else predictions[case_id]
        write_nifti(volume.with_array(array), prediction_dir / by_id[case_id].label.name)

    report = evaluate_folders(prediction_dir, dataset.root / "labelsTr", labels=plan.labels, output=output / "cv")
    per_fold: dict[int, dict[str, Summary]] = {}
    for fold in sorted(set(fold_of.values())):
        cases = [c for c in report.cases if fold_of.get(c.case) == fold]
        per_fold[fold] = {
            plan.labels.get(value, str(value)): summarize([c.classes[value].dice for c in cases if value in c.classes])
            for value in classes
        }
    summary = {
        "folds": {str(k): {n: s.model_dump() for n, s in v.items()} for k, v in per_fold.items()},
        "overall": json.loads(report.model_dump_json()),
        "postprocessing": {str(k): v for k, v in postprocessing.items()},
    }
    summary_json = output / CV_SUMMARY
    summary_json.write_text(json.dumps(summary, indent=1) + "\n")
    table = (
        f"# Cross-validation of {dataset.name}\n\nPer fold (mean Dice ± sd [95% CI]):\n\n{_fold_table(per_fold)}\n\n"
        f"Overall:\n\n{report.to_table()}\n\nLargest-component post-processing: "
        + (", ".join(plan.labels.get(v, str(v)) for v in kept) or "none")
        + "\n"
    )
    summary_table = output / "cv_summary.md"
    summary_table.write_text(table)
    return CrossValidationResult(report, per_fold, postprocessing, summary_json, summary_table)
