"""Classification: BreastMNIST and AdrenalMNIST3D on their validation splits, and CPU latency.

1. BreastMNIST (``breastmnist.npz``) and AdrenalMNIST3D (``adrenalmnist3d_64.npz``) from
   ``../shared/data/medmnist``: the plan ``vesalius plan`` derives, trained with ``--fold official`` (training
   minus a 15% selection share; the source's ``val`` split is the evaluation set, never used for selection,
   calibration or the operating point). Goals: BreastMNIST AUC >= 0.94 and accuracy >= 0.91 (MedMNIST+ best
   0.940 / 0.906); AdrenalMNIST3D AUC >= 0.86 and accuracy >= 0.82 (MedMNIST v2 best 0.839 / 0.802).
2. CPU latency of one forward pass, batch 1, default precision, median (p50) and p95 of ``--runs``: a 224 x 224
   image through the 2-D ResNet-18 the pneumonia plan uses, and a 64^3 volume through the half-width 3-D
   ResNet-18 the AdrenalMNIST3D plan uses (weights do not change latency).

Writes ``benchmarks/results/cls_medmnist.json`` and its section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

from _common import REPO, machine, publish
from vesalius.engines.classification.dataset import read_medmnist
from vesalius.engines.classification.engine import fit_classifier, plan_classification
from vesalius.engines.classification.networks import ClassificationNetwork
from vesalius.engines.classification.plan import make_classification_plan
from vesalius.engines.common.precision import autocast_dtype

NAME = "cls_medmnist"
DATA = REPO.parent / "shared" / "data" / "medmnist"
SETS = {
    "BreastMNIST": ("breastmnist.npz", {"auc": 0.94, "accuracy": 0.91}),
    "AdrenalMNIST3D": ("adrenalmnist3d_64.npz", {"auc": 0.86, "accuracy": 0.82}),
}


def medmnist(file: str, epochs: int | None) -> dict[str, Any]:
    source = DATA / file
    plan = plan_classification(read_medmnist(source))
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = fit_classifier(source, plan, "official", folder, device="cpu", epochs=epochs)
        seconds = time.perf_counter() - started
    evaluation = result.metrics["evaluation"]
    return {
        "plan": {"input_size": plan.input_size, "network": plan.network.architecture, "epochs": epochs or plan.epochs},
        "cases": result.metrics["cases"],
        "metrics": {name: evaluation["metrics"][name] for name in ("auc", "accuracy", "sensitivity", "specificity")},
        "threshold": evaluation["threshold"],
        "calibration": result.metrics["calibration"],
        "seconds": seconds,
    }


def latency(size: list[int], channels: int, runs: int) -> dict[str, Any]:
    plan = make_classification_plan(
        dataset_name="latency",
        kind="binary",
        class_names=["0", "1"],
        class_counts=[1, 1],
        median_size=size,
        channels=channels,
    )
    network = ClassificationNetwork.build(plan.network).eval()
    device = torch.device("cpu")
    dtype = autocast_dtype(device, "auto")
    image = torch.randn(1, channels, *plan.input_size)
    timings = []
    with torch.inference_mode():
        for run in range(runs + 3):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                network(image)
            if run >= 3:  # three warm-up passes
                timings.append(time.perf_counter() - started)
    return {
        "input": plan.input_size,
        "network": f"{plan.network.architecture} {plan.network.spatial_dims}-D width {plan.network.width}",
        "precision": str(dtype or torch.float32).removeprefix("torch."),
        "p50_ms": 1000 * float(np.percentile(timings, 50)),
        "p95_ms": 1000 * float(np.percentile(timings, 95)),
        "runs": runs,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"<!-- {NAME}:start -->",
        "## Classification: MedMNIST validation splits, and CPU latency",
        "",
        f"Written by `benchmarks/{NAME}.py` on {result['date']}; do not edit by hand. Command: `{result['command']}`.",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['usable_cores']} cores. torch {torch.__version__}.",
    ]
    verdicts = []
    for name, b in result["sets"].items():
        goals = SETS[name][1]
        lines += [
            "",
            f"**{name}**: {b['plan']['network']} at {' x '.join(map(str, b['plan']['input_size']))} from scratch, "
            f"{b['plan']['epochs']} epochs ({b['seconds']:.0f} s); training {b['cases']['training']}, selection "
            f"{b['cases']['selection']}, evaluation (the source's val split) {b['cases']['evaluation']}. Operating "
            f"point {b['threshold']:.3f} chosen on the selection set; "
            f"temperature {b['calibration']['temperature']:.2f} "
            f"(ECE {b['calibration']['ece_before']:.3f} -> {b['calibration']['ece_after']:.3f} on the evaluation set).",
            "",
            "| Metric | Value [95% CI] | Goal |",
            "|---|---|---|",
        ]
        for metric, estimate in b["metrics"].items():
            goal = f">= {goals[metric]}" if metric in goals else ""
            low, high = estimate["ci_low"], estimate["ci_high"]
            lines.append(f"| {metric} | {estimate['value']:.3f} [{low:.3f}, {high:.3f}] | {goal} |")
        for metric, goal in goals.items():
            value = b["metrics"][metric]["value"]
            verdicts.append(f"- **{'PASS' if value >= goal else 'FAIL'}** {name} {metric} {value:.3f} (goal >= {goal})")
    lines += ["", "| Latency, batch 1, CPU | Network | Precision | p50 ms | p95 ms |", "|---|---|---|---|---|"]
    for row in result["latency"]:
        lines.append(
            f"| {' x '.join(map(str, row['input']))} | {row['network']} | {row['precision']} | "
            f"{row['p50_ms']:.1f} | {row['p95_ms']:.1f} |"
        )
    lines += ["", "Goals:", "", *verdicts, f"<!-- {NAME}:end -->"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the plan's epochs")
    parser.add_argument("--runs", type=int, default=50, help="timed passes per latency figure")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), help="datasets to train")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"{DATA}: absent; the benchmark needs ../shared/data/medmnist", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"cd {REPO} && .venv/bin/python benchmarks/{NAME}.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "machine": machine(),
        "latency": [latency([224, 224], 1, args.runs), latency([64, 64, 64], 1, args.runs)],
        "sets": {name: medmnist(SETS[name][0], args.epochs) for name in args.sets},
    }
    publish(NAME, result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
