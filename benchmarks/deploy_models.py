"""Deployment paths for the shipped models on this CPU: torch FP32 (the peer), torch BF16, ONNX Runtime FP32 and
ONNX Runtime INT8 (static, QDQ), in one run on the same inputs.

Each package is copied to a scratch folder (the shipped ones are not touched), exported (``export_onnx``) and
quantised (``quantize_int8``) with real calibration inputs; the INT8 graph is scored through the ONNX Runtime
pipeline on the same data as FP32 and gated (``gate``: at most 1 point lost).

- models/cxr-pneumonia: calibration 64 images of the fold's selection set; metric AUC on the 1,043 held-out
  evaluation images (FP32 graph vs INT8 graph, each with the package's temperature and operating point).
  Goal: ORT INT8 at least 2x torch FP32 (batch 1, 128 x 128) with at most 0.5 point AUC lost.
- models/hippocampus: calibration 32 patches (a labelled and a random centre in 16 of fold 0's training cases);
  metric mean Dice of the whole predict path (preprocess, sliding window with TTA, inversion, post-processing) on
  fold 0's validation cases (``--cases`` of them). The shipped model was trained on all cases, so for it this
  measures agreement on seen data, not generalisation; the students (trained on fold 0's training cases) have not
  seen them. Goal: the best CPU path at least 1.5x torch FP32 on the network's patch (1 x 1 x 40 x 56 x 40).
- Students: the distilled and pruned (then fine-tuned) packages that ``benchmarks/deploy_students.py`` leaves in
  ``runs/deploy-students``, when present; exported, timed and scored here like the original, in the same run.

Latency: the network alone on one input, 3 warm-up calls excluded, 30 timed calls, all cores (``bench_package``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import REPO, publish, run_header, section_head, verdict
from vesalius.deploy.onnx import export_onnx
from vesalius.deploy.package_bench import bench_package
from vesalius.deploy.package_int8 import calibration_patches, onnx_auc
from vesalius.deploy.quantize import gate, quantize_int8
from vesalius.deploy.runtime import INT8_FILE, ONNX_FILE, OnnxClassifier, OnnxSegmenter
from vesalius.engines.classification.dataset import read_classification_dataset
from vesalius.engines.classification.engine import Classifier, split_items
from vesalius.engines.classification.images import prepare_images
from vesalius.engines.common.cv import load_or_make_split
from vesalius.engines.common.dataset import load_case, read_msd_dataset
from vesalius.engines.common.metrics.classification import binary_metrics
from vesalius.engines.common.metrics.segmentation import dice
from vesalius.engines.common.package import load_package, resave_package

NAME = "deploy_models"
SHARED = REPO.parent / "shared" / "data"
STUDENTS = REPO / "runs" / "deploy-students"
STUDENT_BACKENDS = ("torch", "onnxruntime")
CLASSIFIER_SPEEDUP_GOAL, CLASSIFIER_MAX_DROP = 2.0, 0.5
SEGMENTER_SPEEDUP_GOAL = 1.5


def students(name: str, scratch: Path) -> dict[str, Path]:
    """The final package of each student of ``name`` that deploy_students.py wrote, copied and exported."""
    found = {}
    for method in ("distilled", "pruned"):
        report = STUDENTS / name / method / "compression.json"
        if report.is_file():
            folder = scratch / f"{name}-{method}"
            shutil.copytree(json.loads(report.read_text())["models"][-1]["package"], folder)
            export_onnx(folder)
            found[method] = folder
    return found


def student_rows(found: dict[str, Path], runs: int, score: Any) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Latency rows (backend named after the student) and the torch path's metric of each student."""
    rows, values = [], {}
    for method, folder in found.items():
        for report in bench_package(folder, STUDENT_BACKENDS, runs=runs):
            rows.append({**report.model_dump(), "backend": f"{method} {report.backend}"})
        values[f"{method} torch"] = score(folder)
    return rows, values


def classifier(folder: Path, runs: int) -> dict[str, Any]:
    torch_model = Classifier(folder, device="cpu", precision="fp32")
    pattern = torch_model.plan.patient_pattern
    dataset = read_classification_dataset(SHARED / "cxr-pneumonia" / "train", patient_pattern=pattern)
    with tempfile.TemporaryDirectory() as scratch:
        _, selection, evaluation = split_items(dataset, torch_model.plan, 0, Path(scratch))
    order = np.random.default_rng(0).permutation(len(selection))[:64]
    calibration = prepare_images([selection[i].source for i in order], torch_model.plan)
    sources, labels = [i.source for i in evaluation], np.asarray([i.label for i in evaluation])
    exported = export_onnx(folder)
    with tempfile.TemporaryDirectory() as scratch:
        int8 = quantize_int8(
            folder / ONNX_FILE, Path(scratch) / INT8_FILE, [calibration[i : i + 8] for i in range(0, 64, 8)]
        )
        resave_package(load_package(folder), extra_files={INT8_FILE: int8})

    def torch_auc(package: Path) -> float:
        model = Classifier(package, device="cpu", precision="fp32")
        probabilities = np.concatenate(
            [model.probabilities(sources[i : i + 64])[:, 1] for i in range(0, len(sources), 64)]
        )
        return float(binary_metrics()["auc"](labels, probabilities))

    extra_rows, extra_values = student_rows(students("cxr-pneumonia", folder.parent), runs, torch_auc)
    fp32, quantised = (
        onnx_auc(OnnxClassifier(folder), sources, labels),
        onnx_auc(OnnxClassifier(folder, graph=INT8_FILE), sources, labels),
    )
    return {
        "export": {"max_abs_diff": exported.max_abs_diff, "exporter": exported.exporter},
        "metric": "AUC",
        "values": {"torch": torch_auc(folder), "onnxruntime": fp32, "onnxruntime-int8": quantised, **extra_values},
        "gate": gate("AUC", fp32, quantised, CLASSIFIER_MAX_DROP).model_dump(),
        "sizes_mb": {
            name: (folder / name).stat().st_size / 1e6 for name in ("weights.safetensors", ONNX_FILE, INT8_FILE)
        },
        "latency": [r.model_dump() for r in bench_package(folder, runs=runs)] + extra_rows,
        "evaluation_items": len(labels),
    }


def segmenter(folder: Path, runs: int, cases: int) -> dict[str, Any]:
    plan_package = load_package(folder)
    from vesalius.engines.common.plan import SegmentationPlan
    from vesalius.engines.segmentation.predict import Predictor

    plan = SegmentationPlan.model_validate(plan_package.manifest.plan)
    dataset = read_msd_dataset(SHARED / "hippocampus")
    by_id = {case.case_id: case for case in dataset.cases}
    split = load_or_make_split(folder.parent / "splits.json", list(by_id), plan.training.folds, plan.training.seed)
    training, validation = split.fold(0).train, split.fold(0).validation
    order = np.random.default_rng(0).permutation(len(training))
    rng = np.random.default_rng(1)
    calibration = calibration_patches(dataset, [by_id[training[i]] for i in order[:16]], plan, rng)
    scored = [load_case(dataset, by_id[case_id]) for case_id in validation[:cases]]
    exported = export_onnx(folder)
    with tempfile.TemporaryDirectory() as scratch:
        int8 = quantize_int8(folder / ONNX_FILE, Path(scratch) / INT8_FILE, calibration, method="percentile")
        resave_package(load_package(folder), extra_files={INT8_FILE: int8})

    def mean_dice(predict: Any) -> float:
        return float(np.mean([dice(predict(c.image).array == k, c.label.array == k) for c in scored for k in (1, 2)]))

    def torch_dice(package: Path) -> float:
        return mean_dice(Predictor(load_package(package), precision="fp32").predict)

    extra_rows, extra_values = student_rows(students("hippocampus", folder.parent), runs, torch_dice)
    values = {
        "torch": torch_dice(folder),
        "onnxruntime": mean_dice(OnnxSegmenter(folder).predict),
        "onnxruntime-int8": mean_dice(OnnxSegmenter(folder, graph=INT8_FILE).predict),
        **extra_values,
    }
    return {
        "export": {"max_abs_diff": exported.max_abs_diff, "exporter": exported.exporter},
        "metric": "Dice",
        "values": values,
        "gate": gate("Dice", values["onnxruntime"], values["onnxruntime-int8"]).model_dump(),
        "sizes_mb": {
            name: (folder / name).stat().st_size / 1e6 for name in ("weights.safetensors", ONNX_FILE, INT8_FILE)
        },
        "latency": [r.model_dump() for r in bench_package(folder, runs=runs)] + extra_rows,
        "evaluation_items": len(scored),
    }


def speedups(model: dict[str, Any]) -> dict[str, float]:
    rows = {r["backend"]: r["p50_ms"] for r in model["latency"]}
    return {backend: rows["torch"] / p50 for backend, p50 in rows.items()}


def render(result: dict[str, Any]) -> str:
    lines = section_head(NAME, "Deployment: torch, ONNX Runtime FP32 and INT8 on this CPU", result)
    verdicts = []
    for name, model in result["models"].items():
        ratio = speedups(model)
        lines += [
            "",
            f"**models/{name}** ({model['metric']} on {model['evaluation_items']} items; ONNX export max |diff| "
            f"{model['export']['max_abs_diff']:.1e}, {model['export']['exporter']}; sizes: weights "
            f"{model['sizes_mb']['weights.safetensors']:.1f} MB, model.onnx {model['sizes_mb'][ONNX_FILE]:.1f} MB, "
            f"INT8 {model['sizes_mb'][INT8_FILE]:.1f} MB)",
            "",
            f"| Backend | p50 ms | p95 ms | Throughput /s | Peak MB | Speed-up vs torch FP32 | {model['metric']} |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in model["latency"]:
            metric = model["values"].get(r["backend"])
            shown = "" if metric is None else f"{metric:.4f}"
            memory = "n/a" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
            lines.append(
                f"| {r['backend']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['throughput_per_s']:.1f} | {memory} | "
                f"{ratio[r['backend']]:.2f}x | {shown} |"
            )
        g = model["gate"]
        lines += [
            "",
            f"INT8 gate: {g['metric']} {g['fp32_value']:.4f} -> {g['int8_value']:.4f} "
            f"({g['drop_points']:+.2f} points lost).",
        ]
        if name == "cxr-pneumonia":
            ok = ratio["onnxruntime-int8"] >= CLASSIFIER_SPEEDUP_GOAL and g["drop_points"] <= CLASSIFIER_MAX_DROP
            verdicts.append(
                f"- **{verdict(ok)}** classifier ORT INT8 {ratio['onnxruntime-int8']:.2f}x torch FP32 (goal >= "
                f"{CLASSIFIER_SPEEDUP_GOAL}x) with {g['drop_points']:.2f} points AUC lost "
                f"(goal <= {CLASSIFIER_MAX_DROP})"
            )
        else:
            best = max((v, k) for k, v in ratio.items() if k != "torch" and k.split()[0] not in ("distilled", "pruned"))
            verdicts.append(
                f"- **{verdict(best[0] >= SEGMENTER_SPEEDUP_GOAL)}** segmenter best CPU path {best[1]} {best[0]:.2f}x "
                f"torch FP32 (goal >= {SEGMENTER_SPEEDUP_GOAL}x)"
            )
        for method in ("distilled", "pruned"):
            if f"{method} torch" in model["values"]:
                fastest = max((v, k) for k, v in ratio.items() if k.startswith(method))
                change = 100 * (model["values"][f"{method} torch"] - model["values"]["torch"])
                verdicts.append(
                    f"- {name} {method} student: {fastest[1].split()[1]} {fastest[0]:.2f}x torch FP32 of the original, "
                    f"{change:+.2f} points {model['metric']} (figures against the original on held-out cases: "
                    "deploy_students)"
                )
    lines += [
        "",
        "Goals and students:",
        "",
        *verdicts,
        "- **not measured**: GPU rows (torch AMP against ORT CUDA/TensorRT; no GPU lent to this task).",
        f"<!-- {NAME}:end -->",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed calls per backend")
    parser.add_argument("--cases", type=int, default=26, help="hippocampus cases scored (of fold 0's validation)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"absent: {SHARED}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    result = run_header(f".venv/bin/python benchmarks/{NAME}.py", load)
    result["versions"] = f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}"
    result["cpu_flags"] = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f.startswith(("avx", "amx"))})
    result["models"] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, measure in (
            ("cxr-pneumonia", lambda f: classifier(f, args.runs)),
            ("hippocampus", lambda f: segmenter(f, args.runs, args.cases)),
        ):
            folder = Path(scratch) / name
            shutil.copytree(REPO / "models" / name / "package", folder)
            result["models"][name] = measure(folder)
    publish(NAME, result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
