"""Trust on hippocampus segmentation: voxel calibration, uncertainty maps as error detectors, abstention, and
the cost of each method, on cases no member was trained on.

The shipped model was trained on all 208 cases, so it has no held-out data. This benchmark holds out every 4th
case (52, sorted by name) and trains three fold members of a 3-fold split of the other 156 at the shipped
recipe's size (16 filters, batch 2) but 6 epochs of 100 iterations, so a 2-core CPU builds them in about 30
minutes (``--prepare`` runs ``vesalius plan`` and ``vesalius train`` into ``runs/trust-hippocampus``; later runs
reuse them). The held-out cases split into validation (26: fits the temperature and the abstain threshold) and
evaluation (26: every figure).

Voxels scored: those within 3 voxels of the predicted or the reference hippocampus (the decisions that matter; the
background far away is trivially right and would flatter every figure). Methods on member 0: one plain pass
(softmax entropy), TTA (8 mirrorings), MC dropout (8 passes, dropout injected at the bottleneck and decoder blocks
since the network was trained without); and the 3-member ensemble.

1. ECE (15 bins) of member 0's plain probabilities and of the ensemble's, before and after temperature scaling
   (fitted on the validation voxels). Goal: at most 0.03 after.
2. Per method and score: voxel error AUROC, coverage at 99% voxel accuracy, AURC, and a policy fitted on the
   validation voxels applied to the evaluation voxels; per case, the rank correlation of the foreground mean
   entropy with the case's Dice (negative is useful: uncertain cases are the worse ones).
3. Seconds per case of each method and of the plain pass; Grad-CAM (bottleneck) and occlusion of the posterior
   hippocampus region on 5 evaluation cases with the sanity check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import spearmanr

from _common import REPO, publish, run_header, section_head, verdict
from vesalius.core.volume import Volume
from vesalius.engines.common.calibration import apply_temperature, expected_calibration_error, fit_temperature
from vesalius.engines.common.metrics.segmentation import dice
from vesalius.engines.common.package import load_package
from vesalius.engines.segmentation.predict import Predictor
from vesalius.io import read_volume
from vesalius.trust.abstain import assess_policy, write_risk_coverage_png
from vesalius.trust.explain import RegionTarget, explain_region, region_patch
from vesalius.trust.sanity import parameter_randomisation_check
from vesalius.trust.uncertainty import segmentation_uncertainty

NAME = "trust_hippocampus"
DATA = REPO.parent / "shared" / "data" / "hippocampus"
RUN = REPO / "runs" / "trust-hippocampus"
MEMBERS = 3
EPOCHS, ITERATIONS = 6, 100
ECE_GOAL = 0.03
TARGET_ACCURACY = 0.99
BAND_VOXELS = 3
METHODS = ("plain", "tta", "mc_dropout", "ensemble")
CALIBRATED = ("plain", "ensemble")


def split_cases() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    entries = sorted(json.loads((DATA / "dataset.json").read_text())["training"], key=lambda e: e["image"])
    return [e for i, e in enumerate(entries) if i % 4], entries[::4]


def prepare() -> None:
    """The training subset (links to the shared files), its plan (3 folds), and the three members."""
    train, _ = split_cases()
    data = RUN / "data"
    for entry in train:
        for key in ("image", "label"):
            link = data / entry[key]
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((DATA / entry[key]).resolve())
    content = json.loads((DATA / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**content, "training": train, "numTraining": len(train)}, indent=1))
    vesalius = str(REPO / ".venv" / "bin" / "vesalius")
    plan = RUN / "plan.json"
    if not plan.is_file():
        subprocess.run(
            [vesalius, "plan", str(data), "--base-filters", "16", "--batch-size", "2", "-o", str(plan)], check=True
        )
        settings = json.loads(plan.read_text())
        settings["training"]["folds"] = MEMBERS
        plan.write_text(json.dumps(settings, indent=1))
    for fold in range(MEMBERS):
        if not (RUN / "run" / f"fold_{fold}" / "model" / "package.json").is_file():
            subprocess.run(
                [vesalius, "train", str(data), "--plan", str(plan), "--fold", str(fold), "--epochs", str(EPOCHS),
                 "--iterations", str(ITERATIONS), "-o", str(RUN / "run")],
                check=True,
            )  # fmt: skip


def band(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation((predicted > 0) | (reference > 0), iterations=BAND_VOXELS)


def case_methods(members: list[Any], volume: Volume, passes: int) -> dict[str, tuple[Any, float]]:
    """Each method's SegmentationUncertainty on the case and its seconds."""
    single = Predictor(members[:1], tta=False)
    runs = {
        "plain": (single, "ensemble"),
        "tta": (Predictor(members[:1], tta=True), "tta"),
        "mc_dropout": (single, "mc_dropout"),
        "ensemble": (Predictor(members, tta=False), "ensemble"),
    }
    out = {}
    for name, (predictor, method) in runs.items():
        started = time.perf_counter()
        result = segmentation_uncertainty(predictor, volume, method, passes=passes)  # type: ignore[arg-type]
        out[name] = (result, time.perf_counter() - started)
    return out


def collect(members: list[Any], entries: list[dict[str, str]], passes: int) -> dict[str, Any]:
    """Per method: voxel scores and correctness in the band, per-case scores and Dice, seconds; plain logits."""
    data: dict[str, Any] = {
        m: {"entropy": [], "mi": [], "correct": [], "case_entropy": [], "dice": [], "s": []} for m in METHODS
    }
    logp: dict[str, list[np.ndarray]] = {name: [] for name in CALIBRATED}
    reference_labels: dict[str, list[np.ndarray]] = {name: [] for name in CALIBRATED}
    for entry in entries:
        volume, reference = read_volume(DATA / entry["image"]), read_volume(DATA / entry["label"]).array.astype(int)
        for name, (result, seconds) in case_methods(members, volume, passes).items():
            labels = result.labels.array
            inside = band(labels, reference)
            d = data[name]
            d["entropy"].append(result.entropy.array[inside])
            d["mi"].append(result.mutual_information.array[inside])
            d["correct"].append((labels == reference)[inside])
            d["case_entropy"].append(result.foreground_entropy)
            d["dice"].append(float(np.mean([dice(labels == c, reference == c) for c in (1, 2)])))
            d["s"].append(seconds)
            if name in CALIBRATED:
                probabilities = np.clip(result.probabilities.array[inside], 1e-7, 1.0)
                logp[name].append(np.log(probabilities))
                reference_labels[name].append(reference[inside])
    for d in data.values():
        for key in ("entropy", "mi", "correct"):
            d[key] = np.concatenate(d[key])
    data["logp"] = {name: np.concatenate(values) for name, values in logp.items()}
    data["labels"] = {name: np.concatenate(values) for name, values in reference_labels.items()}
    return data


def calibration(validation: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """Per calibrated method: a temperature on the validation voxels' log-probabilities, ECE before and after."""
    out: dict[str, Any] = {}
    for name in CALIBRATED:
        temperature = fit_temperature(validation["logp"][name], validation["labels"][name])
        logp, labels = evaluation["logp"][name], evaluation["labels"][name]
        out[name] = {
            "temperature": temperature,
            "ece_before": expected_calibration_error(labels, apply_temperature(logp, 1.0)),
            "ece_after": expected_calibration_error(labels, apply_temperature(logp, temperature)),
        }
    out["voxels_validation"] = len(validation["labels"]["plain"])
    out["voxels_evaluation"] = len(evaluation["labels"]["plain"])
    return out


def scores(validation: dict[str, Any], evaluation: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    rows, curves = {}, {}
    for method in METHODS:
        v, e = validation[method], evaluation[method]
        per_score = {}
        for score, key in (("predictive_entropy", "entropy"), ("mutual_information", "mi")):
            if method == "plain" and key == "mi":
                continue  # one sample: no disagreement to measure
            assessed = assess_policy((v[key], v["correct"]), (e[key], e["correct"]), score, TARGET_ACCURACY, method)
            curves[f"{method} {score}"] = assessed.curve
            per_score[score] = assessed.model_dump(exclude={"curve"})
        rows[method] = {
            "voxel_accuracy": float(e["correct"].mean()),
            "mean_dice": float(np.mean(e["dice"])),
            "case_entropy_vs_dice_spearman": float(spearmanr(e["case_entropy"], e["dice"]).statistic),
            "seconds_per_case": float(np.median(e["s"])),
            "scores": per_score,
        }
    return rows, curves


def explanations(members: list[Any], entries: list[dict[str, str]]) -> dict[str, Any]:
    """Each method on the posterior hippocampus as member 0 segments it in model space, with its sanity check."""
    predictor = Predictor(members[:1], tta=False)
    network, plan = predictor.networks[0], predictor.plan
    rows: dict[str, Any] = {}
    for method in ("gradcam", "occlusion"):
        seconds, spearman = [], []
        for entry in entries:
            prepared, probabilities = predictor.model_space(read_volume(DATA / entry["image"]))
            mask = probabilities[0].argmax(dim=0).numpy() == 2
            if not mask.any():
                continue
            image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(prepared.array, -1, 0)))[None]
            target = RegionTarget(2, mask)
            started = time.perf_counter()
            explain_region(network, image, target, method, plan.patch_size)
            seconds.append(time.perf_counter() - started)
            patch, patch_target, _ = region_patch(image, target, plan.patch_size)
            spearman.append(parameter_randomisation_check(network, patch, patch_target, method).spearman)
        rows[method] = {
            "seconds_per_case": float(np.median(seconds)),
            "sanity_spearman_median": float(np.median(spearman)),
            "sanity_passed": float(np.mean(np.asarray(spearman) < 0.5)),
            "cases": len(seconds),
        }
    return rows


def render(result: dict[str, Any]) -> str:
    c = result["calibration"]
    lines = section_head(NAME, "Trust: hippocampus segmentation (voxel calibration, uncertainty, abstention)", result)
    lines += [
        "",
        f"Three fold members ({EPOCHS} x {ITERATIONS} iterations each) on 156 cases; 26 held-out validation and "
        f"26 evaluation cases. Voxels within {BAND_VOXELS} voxels of the predicted or reference hippocampus: "
        f"{c['voxels_validation']} validation, {c['voxels_evaluation']} evaluation.",
        "",
        *[
            f"- **{verdict(c[m]['ece_after'] <= ECE_GOAL)}** {m} voxel ECE {c[m]['ece_before']:.4f} before, "
            f"{c[m]['ece_after']:.4f} after temperature scaling (T = {c[m]['temperature']:.3f}; goal <= {ECE_GOAL})."
            for m in CALIBRATED
        ],
        "",
        "| Method | Mean Dice | Voxel acc. | Score | Error AUROC | Coverage at 99% | AURC | Policy on evaluation: "
        "coverage, acc. kept, errors flagged | Case entropy vs Dice (Spearman) | s per case (x plain) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = result["uncertainty"]["plain"]["seconds_per_case"]
    for method, row in result["uncertainty"].items():
        for score, s in row["scores"].items():
            kept = "n/a" if s["evaluation_accuracy_kept"] is None else f"{s['evaluation_accuracy_kept']:.4f}"
            lines.append(
                f"| {method} | {row['mean_dice']:.3f} | {row['voxel_accuracy']:.4f} | {score} | "
                f"{s['error_auroc']:.3f} | {s['coverage_at_target']:.3f} | {s['aurc']:.4f} | "
                f"{s['evaluation_coverage']:.3f}, {kept}, {s['errors_flagged']:.2f} | "
                f"{row['case_entropy_vs_dice_spearman']:.2f} | {row['seconds_per_case']:.2f} "
                f"({row['seconds_per_case'] / base:.1f}x) |"
            )
    lines += ["", "| Explanation (posterior region) | s per case | Sanity: median Spearman | Passed (< 0.5) |"]
    lines += ["|---|---|---|---|"]
    for method, row in result["explanations"].items():
        lines.append(
            f"| {method} | {row['seconds_per_case']:.2f} | {row['sanity_spearman_median']:.2f} | "
            f"{row['sanity_passed']:.0%} of {row['cases']} |"
        )
    lines += ["", f"Risk-coverage curves: `benchmarks/results/{NAME}_risk_coverage.png`.", f"<!-- {NAME}:end -->"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", action="store_true", help="build the data split and train the members first")
    parser.add_argument("--passes", type=int, default=8, help="MC-dropout passes")
    parser.add_argument("--limit", type=int, default=None, help="cases per held-out half (quick runs)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"absent: {DATA}", file=sys.stderr)
        return 2
    if args.prepare:
        prepare()
    folders = [RUN / "run" / f"fold_{k}" / "model" for k in range(MEMBERS)]
    if not all((f / "package.json").is_file() for f in folders):
        print(f"members missing in {RUN / 'run'}: run with --prepare (about 30 minutes)", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    members = [load_package(f) for f in folders]
    _, held = split_cases()
    validation_cases, evaluation_cases = held[: len(held) // 2], held[len(held) // 2 :]
    if args.limit:
        validation_cases, evaluation_cases = validation_cases[: args.limit], evaluation_cases[: args.limit]
    result = run_header(f".venv/bin/python benchmarks/{NAME}.py", load)
    result["versions"] = f"torch {torch.__version__}"
    validation = collect(members, validation_cases, args.passes)
    evaluation = collect(members, evaluation_cases, args.passes)
    result["calibration"] = calibration(validation, evaluation)
    result["uncertainty"], curves = scores(validation, evaluation)
    result["explanations"] = explanations(members, evaluation_cases[:5])
    write_risk_coverage_png(REPO / "benchmarks" / "results" / f"{NAME}_risk_coverage.png", curves)
    publish(NAME, result, render(result))
    return 0 if min(result["calibration"][m]["ece_after"] for m in CALIBRATED) <= ECE_GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
