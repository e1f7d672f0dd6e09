"""Trust on the shipped pneumonia classifier: calibration, uncertainty as an error detector, abstention, and the
cost of each explanation and uncertainty method, on held-out children.

Data: fold 0 of ``../shared/data/cxr-pneumonia/train`` rebuilt from the package's plan, as ``cls_models.py`` does:
the selection set (597 images, which chose the epoch, the temperature and the operating point) is the
validation set here (temperature and abstain thresholds are fitted on it), and the evaluation set (1,043 images of
other children) is where every figure is measured.

1. ECE (15 bins, top label) on the evaluation set before and after temperature scaling fitted on the selection
   set. Goal: at most 0.03 after.
2. For each uncertainty method (one softmax pass; TTA over a left-right flip; MC dropout, 20 passes with dropout
   injected on the pooled features since the model was trained without) and each score: AUROC for detecting the
   model's wrong answers (at its operating point), coverage at 99% accuracy, AURC; and an abstain policy fitted on
   the selection set for 99% accuracy, applied to the evaluation set (coverage, accuracy kept, share of errors
   flagged). A fold ensemble is not measured here: one fold is shipped.
3. Time per image of each uncertainty method and each explanation method (Grad-CAM, Grad-CAM++, occlusion,
   integrated gradients) against one plain forward pass, and the model-randomisation sanity check (Spearman of
   the trained and randomised maps) on 10 evaluation images per method.

Writes ``benchmarks/results/trust_cxr_pneumonia.json``, a risk-coverage figure beside it, the section of
``docs/benchmarks.md``, and the abstain policy ``models/cxr-pneumonia/abstain_policy.json`` (TTA, predictive
entropy), which ``vesalius predict --uncertainty --policy`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import REPO, publish, run_header, section_head, verdict
from vesalius.engines.classification.dataset import read_classification_dataset
from vesalius.engines.classification.engine import Classifier, split_items
from vesalius.engines.classification.images import prepare_images
from vesalius.engines.classification.trainer import predict_logits, tta_flip_axes
from vesalius.engines.common.calibration import apply_temperature, expected_calibration_error, fit_temperature
from vesalius.trust.abstain import assess_policy, write_risk_coverage_png
from vesalius.trust.case import tta_axes
from vesalius.trust.explain import METHODS, explain
from vesalius.trust.sanity import parameter_randomisation_check
from vesalius.trust.uncertainty import classification_uncertainty

NAME = "trust_cxr_pneumonia"
DATA = REPO.parent / "shared" / "data" / "cxr-pneumonia" / "train"
PACKAGE = REPO / "models" / "cxr-pneumonia" / "package"
POLICY = REPO / "models" / "cxr-pneumonia" / "abstain_policy.json"
ECE_GOAL = 0.03
TARGET_ACCURACY = 0.99
SCORES = {
    "softmax": ("least_confidence", "predictive_entropy"),
    "tta": ("predictive_entropy", "mutual_information", "variance"),
    "mc_dropout": ("predictive_entropy", "mutual_information", "variance"),
}


def held_out(classifier: Classifier) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Prepared images and labels of the selection (validation) and evaluation sets of the package's fold."""
    pattern = classifier.plan.patient_pattern
    dataset = read_classification_dataset(DATA, **({"patient_pattern": pattern} if pattern else {}))
    with tempfile.TemporaryDirectory() as folder:
        _, selection, evaluation = split_items(
            dataset, classifier.plan, classifier.manifest.metrics["fold"], Path(folder)
        )
    return {
        name: (prepare_images([i.source for i in items], classifier.plan), np.asarray([i.label for i in items]))
        for name, items in (("validation", selection), ("evaluation", evaluation))
    }


def calibration(classifier: Classifier, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    axes = tta_flip_axes(classifier.plan)
    logits = {
        name: predict_logits(classifier.network, images, classifier.device, classifier.dtype, flip_axes=axes)["main"]
        for name, (images, _) in sets.items()
    }
    temperature = fit_temperature(logits["validation"], sets["validation"][1])
    labels = sets["evaluation"][1]
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(labels, apply_temperature(logits["evaluation"], 1.0)),
        "ece_after": expected_calibration_error(labels, apply_temperature(logits["evaluation"], temperature)),
        "n_validation": len(sets["validation"][1]),
        "n_evaluation": len(labels),
    }


def correct(classifier: Classifier, probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    names = classifier.plan.class_names
    return np.asarray([names.index(classifier.label(row)) for row in probabilities]) == labels


def uncertainty(classifier: Classifier, sets: dict[str, Any], passes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per method: seconds per image and, per score, the error-detection and abstention figures."""
    rows: dict[str, Any] = {}
    curves = {}
    for method, scores in SCORES.items():
        options: dict[str, Any] = {"passes": passes, "flip_axes": tta_axes(classifier)}
        results, seconds = {}, 0.0
        for name, (images, _) in sets.items():
            started = time.perf_counter()
            results[name] = classification_uncertainty(classifier, images, method, **options)  # type: ignore[arg-type]
            seconds = time.perf_counter() - started if name == "evaluation" else seconds
        right = {name: correct(classifier, results[name].probabilities, sets[name][1]) for name in sets}
        per_score = {}
        for score in scores:
            values = {name: results[name].score(score) for name in sets}
            assessed = assess_policy(
                (values["validation"], right["validation"]),
                (values["evaluation"], right["evaluation"]),
                score,
                TARGET_ACCURACY,
                method,
            )
            per_score[score] = assessed.model_dump(exclude={"curve"})
            curves[f"{method} {score}"] = assessed.curve
        rows[method] = {
            "samples": results["evaluation"].samples,
            "seconds_per_image": seconds / len(sets["evaluation"][1]),
            "accuracy": float(right["evaluation"].mean()),
            "errors": int((~right["evaluation"]).sum()),
            "scores": per_score,
        }
    return rows, curves


def explanations(classifier: Classifier, images: np.ndarray, labels: np.ndarray, count: int) -> dict[str, Any]:
    """Seconds per image and the sanity check of each method on ``count`` images (half of each class)."""
    chosen = np.concatenate([np.flatnonzero(labels == c)[: count // 2] for c in (0, 1)])
    rows = {}
    for method in METHODS:
        seconds, spearman = [], []
        for index in chosen:
            image = torch.from_numpy(images[index : index + 1])
            started = time.perf_counter()
            explain(classifier.network, image, int(labels[index]), method)
            seconds.append(time.perf_counter() - started)
            spearman.append(
                parameter_randomisation_check(classifier.network, image, int(labels[index]), method).spearman
            )
        rows[method] = {
            "seconds_per_image": float(np.median(seconds)),
            "sanity_spearman_median": float(np.median(spearman)),
            "sanity_passed": float(np.mean(np.asarray(spearman) < 0.5)),
            "images": len(chosen),
        }
    return rows


def plain_seconds(classifier: Classifier, images: np.ndarray, repeats: int = 30) -> float:
    """One image through the network (no flips), median of ``repeats`` after warm-up: the baseline."""
    times = []
    for index in range(repeats + 3):
        started = time.perf_counter()
        predict_logits(classifier.network, images[index : index + 1], classifier.device, classifier.dtype)
        if index >= 3:
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def render(result: dict[str, Any]) -> str:
    c, base = result["calibration"], result["plain_seconds_per_image"]
    lines = section_head(
        NAME, "Trust: pneumonia classifier (calibration, uncertainty, abstention, explanations)", result
    )
    lines += [
        "",
        f"models/cxr-pneumonia on its held-out children: temperature fitted on {c['n_validation']} validation "
        f"images (T = {c['temperature']:.3f}); figures on {c['n_evaluation']} evaluation images.",
        "",
        f"**{verdict(c['ece_after'] <= ECE_GOAL)}** ECE {c['ece_before']:.4f} before, {c['ece_after']:.4f} after "
        f"temperature scaling (goal <= {ECE_GOAL}).",
        "",
        "| Method (samples) | Score | Error AUROC | Coverage at 99% acc. | AURC | Policy (fitted on validation): "
        "coverage, accuracy kept, errors flagged | Time per image, batches of 64 (x softmax) |",
        "|---|---|---|---|---|---|---|",
    ]
    single = result["uncertainty"]["softmax"]["seconds_per_image"]  # the product's own prediction, batched
    for method, row in result["uncertainty"].items():
        for score, s in row["scores"].items():
            kept = "n/a" if s["evaluation_accuracy_kept"] is None else f"{s['evaluation_accuracy_kept']:.3f}"
            lines.append(
                f"| {method} ({row['samples']}) | {score} | {s['error_auroc']:.3f} | {s['coverage_at_target']:.3f} | "
                f"{s['aurc']:.4f} | {s['evaluation_coverage']:.3f}, {kept}, {s['errors_flagged']:.2f} | "
                f"{1000 * row['seconds_per_image']:.1f} ms ({row['seconds_per_image'] / single:.1f}x) |"
            )
    first = next(iter(result["uncertainty"].values()))
    lines += [
        "",
        f"Accuracy at the operating point: {first['accuracy']:.4f} ({first['errors']} errors). Explanations run one "
        f"image at a time; their baseline is one plain forward pass at batch 1, {1000 * base:.1f} ms.",
        "",
        "| Explanation | Time per image (x plain, batch 1) | Sanity: median Spearman vs random | Passed (< 0.5) |",
        "|---|---|---|---|",
    ]
    for method, row in result["explanations"].items():
        lines.append(
            f"| {method} | {1000 * row['seconds_per_image']:.0f} ms ({row['seconds_per_image'] / base:.0f}x) | "
            f"{row['sanity_spearman_median']:.2f} | {row['sanity_passed']:.0%} of {row['images']} |"
        )
    lines += ["", f"Risk-coverage curves: `benchmarks/results/{NAME}_risk_coverage.png`.", f"<!-- {NAME}:end -->"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=20, help="MC-dropout passes")
    parser.add_argument("--explain-images", type=int, default=10, help="images per explanation method")
    args = parser.parse_args()
    if not DATA.is_dir() or not PACKAGE.is_dir():
        print(f"absent: {DATA} or {PACKAGE}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    classifier = Classifier(PACKAGE, device="cpu")
    sets = held_out(classifier)
    result = run_header(f".venv/bin/python benchmarks/{NAME}.py", load)
    result["versions"] = f"torch {torch.__version__}"
    result["calibration"] = calibration(classifier, sets)
    result["plain_seconds_per_image"] = plain_seconds(classifier, sets["evaluation"][0])
    result["uncertainty"], curves = uncertainty(classifier, sets, args.passes)
    result["explanations"] = explanations(classifier, *sets["evaluation"], args.explain_images)
    write_risk_coverage_png(REPO / "benchmarks" / "results" / f"{NAME}_risk_coverage.png", curves)
    policy = result["uncertainty"]["tta"]["scores"]["predictive_entropy"]["policy"]
    POLICY.write_text(json.dumps(policy, indent=1) + "\n")
    publish(NAME, result, render(result))
    return 0 if result["calibration"]["ece_after"] <= ECE_GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
