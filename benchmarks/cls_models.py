"""Classification: the shipped models on their held-out evaluation sets, and their CPU latency per input.

Each package in ``models/`` (cxr-pneumonia, breast-us, adrenal-3d) is loaded as ``vesalius predict`` loads it and
scored on the evaluation set of the fold it was trained on, rebuilt here from the data and the package's plan:
the held-out patients of fold 0 of ``../shared/data/cxr-pneumonia/train``, and the ``val`` split of the MedMNIST
files. Those cases never chose an epoch, a temperature or an operating point (``engine.py`` explains the three
disjoint sets); the held-back public test splits are not here and are never used. The figures must equal the
ones the package recorded at training time: the script fails when they do not.

Goals (the issue's): pneumonia accuracy >= 0.95 and AUC >= 0.99 (Kermany 2018: 0.928 / 0.968); BreastMNIST AUC >=
0.94 and accuracy >= 0.91 (MedMNIST+ best 0.940 / 0.906); AdrenalMNIST3D AUC >= 0.86 and accuracy >= 0.82
(MedMNIST v2 best 0.839 / 0.802). Latency: one input at a time through the whole predict path (read the file,
resize, normalise, network, calibrate), batch 1, three warm-up passes excluded, p50 and p95.

Writes ``benchmarks/results/cls_models.json`` and its section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import REPO, machine, publish
from vesalius.engines.classification.dataset import read_classification_dataset
from vesalius.engines.classification.engine import Classifier, split_items
from vesalius.engines.classification.images import load_image
from vesalius.engines.common.metrics.classification import classification_report

NAME = "cls_models"
SHARED = REPO.parent / "shared" / "data"
MODELS: dict[str, dict[str, Any]] = {
    "cxr-pneumonia": {
        "data": SHARED / "cxr-pneumonia" / "train",
        "goals": {"accuracy": 0.95, "auc": 0.99},
        "evaluation": "held-out patients of fold 0 (of 5)",
    },
    "breast-us": {
        "data": SHARED / "medmnist" / "breastmnist.npz",
        "goals": {"auc": 0.94, "accuracy": 0.91},
        "evaluation": "BreastMNIST val split",
    },
    "adrenal-3d": {
        "data": SHARED / "medmnist" / "adrenalmnist3d_64.npz",
        "goals": {"auc": 0.86, "accuracy": 0.82},
        "evaluation": "AdrenalMNIST3D (64^3) val split",
    },
}
REPORTED = ("auc", "accuracy", "sensitivity", "specificity", "f1")
TOLERANCE = 1e-3  # the package's recorded figures and this run's may differ by float rounding only


def score(name: str, runs: int) -> dict[str, Any]:
    config = MODELS[name]
    classifier = Classifier(REPO / "models" / name / "package", device="cpu")
    recorded = classifier.manifest.metrics
    pattern = classifier.plan.patient_pattern  # the fold is rebuilt with the grouping it was trained with
    dataset = read_classification_dataset(config["data"], **({"patient_pattern": pattern} if pattern else {}))
    with tempfile.TemporaryDirectory() as folder:
        _, _, evaluation = split_items(dataset, classifier.plan, recorded["fold"], Path(folder))
    sources = [item.source for item in evaluation]
    probabilities = np.concatenate([classifier.probabilities(sources[i : i + 64]) for i in range(0, len(sources), 64)])
    labels = np.asarray([item.label for item in evaluation])
    plan = classifier.plan
    report = classification_report(labels, probabilities, plan.kind, plan.class_names, classifier.threshold)
    metrics = {metric: report.metrics[metric].model_dump() for metric in REPORTED if metric in report.metrics}
    mismatch = {
        metric: (metrics[metric]["value"], recorded["evaluation"]["metrics"][metric]["value"])
        for metric in metrics
        if abs(metrics[metric]["value"] - recorded["evaluation"]["metrics"][metric]["value"]) > TOLERANCE
    }
    timings = []
    for run in range(runs + 3):
        started = time.perf_counter()
        classifier.probabilities([sources[run % len(sources)]])
        if run >= 3:
            timings.append(time.perf_counter() - started)
    return {
        "evaluation": config["evaluation"],
        "plan": {
            "network": f"{plan.network.architecture} {plan.network.spatial_dims}-D width {plan.network.width}",
            "input_size": plan.input_size,
        },
        "training": {key: recorded[key] for key in ("cases", "epochs", "best_epoch", "training_seconds")},
        "threshold": classifier.threshold,
        "temperature": classifier.temperature,
        "calibration": recorded.get("calibration"),
        "metrics": metrics,
        "mismatch_with_package": mismatch,
        "latency": {
            "input": list(load_image(sources[0]).shape[1:]),
            "precision": str(classifier.dtype or torch.float32).removeprefix("torch."),
            "p50_ms": 1000 * float(np.percentile(timings, 50)),
            "p95_ms": 1000 * float(np.percentile(timings, 95)),
            "runs": runs,
        },
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"<!-- {NAME}:start -->",
        "## Classification: shipped models on held-out data, and CPU latency",
        "",
        f"Written by `benchmarks/{NAME}.py` on {result['date']}; do not edit by hand. Command: `{result['command']}`.",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['usable_cores']} cores. torch {torch.__version__}.",
    ]
    verdicts = []
    for name, b in result["models"].items():
        cases, calibration = b["training"]["cases"], b["calibration"] or {}
        lines += [
            "",
            f"**models/{name}**: {b['plan']['network']} at {' x '.join(map(str, b['plan']['input_size']))}, "
            f"best of {b['training']['epochs']} epochs (epoch {b['training']['best_epoch']}, "
            f"{b['training']['training_seconds']:.0f} s); training {cases['training']}, selection "
            f"{cases['selection']}, evaluation {cases['evaluation']} ({b['evaluation']}). Operating point "
            f"{b['threshold']:.3f} and temperature {b['temperature']:.2f} chosen on the selection set"
            + (
                f"; ECE on the evaluation set {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}."
                if calibration
                else "."
            ),
            "",
            "| Metric | Value [95% CI] | Goal |",
            "|---|---|---|",
        ]
        goals = MODELS[name]["goals"]
        for metric, estimate in b["metrics"].items():
            goal = f">= {goals[metric]}" if metric in goals else ""
            lines.append(
                f"| {metric} | {estimate['value']:.3f} [{estimate['ci_low']:.3f}, {estimate['ci_high']:.3f}] | {goal} |"
            )
        for metric, goal in goals.items():
            value = b["metrics"][metric]["value"]
            verdicts.append(f"- **{'PASS' if value >= goal else 'FAIL'}** {name} {metric} {value:.3f} (goal >= {goal})")
    lines += [
        "",
        "| Latency, one input, CPU, whole predict path | Input | Precision | p50 ms | p95 ms |",
        "|---|---|---|---|---|",
    ]
    for name, b in result["models"].items():
        latency = b["latency"]
        lines.append(
            f"| models/{name} | {' x '.join(map(str, latency['input']))} | {latency['precision']} | "
            f"{latency['p50_ms']:.1f} | {latency['p95_ms']:.1f} |"
        )
    lines += ["", "Goals:", "", *verdicts, f"<!-- {NAME}:end -->"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="timed inputs per latency figure")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="models to score")
    args = parser.parse_args()
    absent = [str(MODELS[m]["data"]) for m in args.models if not Path(MODELS[m]["data"]).exists()]
    absent += [f"models/{m}/package" for m in args.models if not (REPO / "models" / m / "package").is_dir()]
    if absent:
        print(
            f"absent: {', '.join(absent)}; the benchmark needs ../shared/data and the shipped models", file=sys.stderr
        )
        return 2
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"cd {REPO} && .venv/bin/python benchmarks/{NAME}.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "machine": machine(),
        "models": {name: score(name, args.runs) for name in args.models},
    }
    publish(NAME, result, render(result))
    mismatched = {
        name: b["mismatch_with_package"] for name, b in result["models"].items() if b["mismatch_with_package"]
    }
    if mismatched:
        print(f"figures differ from those the packages recorded: {mismatched}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
