"""Hippocampus segmentation: cross-validation Dice, inference speed against MONAI, GPU time to Dice 0.88.

1. Cross-validation: reads the summary that ``vesalius train --fold cv`` (``make model-hippocampus``) wrote in
   ``--run`` and checks mean Dice >= 0.90 for anterior and posterior.
2. Inference: fold 0's weights on fold 0's held-out cases, each case preprocessed once and then segmented by
   - MONAI ``sliding_window_inference`` at nnU-Net-like settings (patch from the plan, overlap 0.5, Gaussian
     blending, all 8 mirrored copies, logits averaged then softmax), float32: the peer;
   - the same under bfloat16 autocast, to show how much of the difference is precision alone;
   - Vesalius ``sliding_window_probabilities`` with the same settings, in float32 and in its default
     precision (``auto``: bfloat16 on CPUs with native bf16, and on GPUs).
   Reported: input voxels per second (median of ``--repeats`` passes over all cases) and mean Dice against the
   reference labels. Goal: the default at least 2x the peer's voxels/s with mean Dice within 0.005.
   Run on the CPU, and also on the GPU when CUDA is available.
3. On a GPU only: wall time from the start of ``train_fold`` (preprocessing included) on fold 0 with the
   default plan until validation mean Dice first reaches 0.88.

Writes ``benchmarks/results/seg_hippocampus.json`` and its section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers.utils import sliding_window_inference

from _common import REPO, machine, publish
from vesalius.engines.common.cv import load_or_make_split
from vesalius.engines.common.dataset import load_case, read_msd_dataset
from vesalius.engines.common.metrics.segmentation import dice
from vesalius.engines.common.package import load_package
from vesalius.engines.common.plan import SegmentationPlan, plan_dataset
from vesalius.engines.common.precision import autocast_dtype
from vesalius.engines.segmentation.preprocess import preprocess_case
from vesalius.engines.segmentation.sliding_window import mirror_sets, sliding_window_probabilities
from vesalius.engines.segmentation.trainer import train_fold

NAME = "seg_hippocampus"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hippocampus"
CV_GOAL = 0.90
SPEED_GOAL = 2.0
DICE_TOLERANCE = 0.005
GPU_DICE_TARGET = 0.88

Segmenter = Callable[[torch.nn.Module, torch.Tensor, SegmentationPlan, torch.device], torch.Tensor]


def monai_segmenter(dtype: torch.dtype | None) -> Segmenter:
    """MONAI's sliding window per mirrored copy, logits averaged (nnU-Net's TTA), then softmax."""

    def run(
        network: torch.nn.Module, image: torch.Tensor, plan: SegmentationPlan, device: torch.device
    ) -> torch.Tensor:
        total: torch.Tensor | None = None
        combos = mirror_sets(plan.augmentation.mirror_axes)
        for combo in combos:
            dims = [axis + 2 for axis in combo]
            source = torch.flip(image, dims) if dims else image
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = sliding_window_inference(
                    source.to(device),
                    roi_size=tuple(plan.patch_size),
                    sw_batch_size=1,
                    predictor=network,
                    overlap=0.5,
                    mode="gaussian",
                )
            assert isinstance(logits, torch.Tensor)
            logits = logits.float()
            logits = torch.flip(logits, dims) if dims else logits
            total = logits if total is None else total + logits
        assert total is not None
        return torch.softmax(total / len(combos), dim=1).cpu()

    return run


def vesalius_segmenter(dtype: torch.dtype | None) -> Segmenter:
    def run(
        network: torch.nn.Module, image: torch.Tensor, plan: SegmentationPlan, device: torch.device
    ) -> torch.Tensor:
        return sliding_window_probabilities(
            network,
            image,
            plan.patch_size,
            overlap=0.5,
            mirror_axes=plan.augmentation.mirror_axes,
            device=device,
            dtype=dtype,
        )

    return run


def held_out_cases(run: Path, data: Path, plan: SegmentationPlan, limit: int | None) -> list[tuple[str, Any, Any]]:
    """Fold 0's validation cases, preprocessed as the predictor does: (id, (1, C, i, j, k) tensor, labels)."""
    dataset = read_msd_dataset(data)
    split = load_or_make_split(run / "splits.json", [c.case_id for c in dataset.cases], plan.training.folds, 0)
    by_id = {case.case_id: case for case in dataset.cases}
    ids = split.fold(0).validation[:limit]
    prepared = []
    for case_id in ids:
        image, label = preprocess_case(load_case(dataset, by_id[case_id]), plan)
        tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image.array, -1, 0)))[None]
        prepared.append((case_id, tensor, label.array))
    return prepared


def measure(
    name: str,
    segment: Segmenter,
    network: torch.nn.Module,
    cases: list[tuple[str, Any, Any]],
    plan: SegmentationPlan,
    device: torch.device,
    repeats: int,
) -> dict[str, Any]:
    """Median seconds over ``repeats`` passes through all cases, and the mean Dice per class of the last pass."""
    network.eval()
    segment(network, cases[0][1], plan, device)  # warm-up: kernels, allocator
    passes, scores = [], {value: [] for value in range(1, plan.num_classes)}
    with torch.inference_mode():
        for repeat in range(repeats):
            started = time.perf_counter()
            predictions = [segment(network, image, plan, device).argmax(dim=1)[0].numpy() for _, image, _ in cases]
            if device.type == "cuda":
                torch.cuda.synchronize()
            passes.append(time.perf_counter() - started)
            if repeat == repeats - 1:
                for predicted, (_, _, label) in zip(predictions, cases, strict=True):
                    for value in scores:
                        scores[value].append(dice(predicted == value, label == value))
    voxels = sum(int(np.prod(image.shape[2:])) for _, image, _ in cases)
    seconds = statistics.median(passes)
    per_class = {plan.labels[value]: float(np.mean(v)) for value, v in scores.items()}
    return {
        "method": name,
        "device": str(device),
        "seconds": seconds,
        "passes": passes,
        "voxels": voxels,
        "voxels_per_second": voxels / seconds,
        "dice": per_class,
        "mean_dice": float(np.mean(list(per_class.values()))),
    }


def inference_comparison(run: Path, data: Path, limit: int | None, repeats: int) -> list[dict[str, Any]]:
    package = load_package(run / "fold_0" / "model")
    plan = SegmentationPlan.model_validate(package.manifest.plan)
    cases = held_out_cases(run, data, plan, limit)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        network = plan.network.build()
        network.load_state_dict(package.state_dict())
        network = network.to(device).eval()
        auto = autocast_dtype(device, "auto")
        methods: list[tuple[str, Segmenter]] = [
            ("MONAI sliding_window_inference, fp32 (peer)", monai_segmenter(None)),
            ("MONAI sliding_window_inference, bf16 autocast", monai_segmenter(torch.bfloat16)),
            ("Vesalius sliding window, fp32", vesalius_segmenter(None)),
            (f"Vesalius sliding window, default ({_dtype_name(auto)})", vesalius_segmenter(auto)),
        ]
        for name, segment in methods:
            row = measure(name, segment, network, cases, plan, device, repeats)
            row["cases"] = len(cases)
            rows.append(row)
            print(
                f"{device} {name}: {row['seconds']:.2f} s, {row['voxels_per_second'] / 1e6:.2f} Mvox/s, "
                f"Dice {row['mean_dice']:.4f}",
                flush=True,
            )
    return rows


class _ReachedError(Exception):
    """Stops training at the first epoch whose validation Dice reaches the target."""


def gpu_time_to_dice(data: Path, epochs: int, iterations: int) -> dict[str, Any]:
    """Train fold 0 with the default plan on the GPU; wall time until validation mean Dice >= 0.88."""
    if not torch.cuda.is_available():
        return {"measured": False, "reason": "no CUDA GPU on this machine"}
    _, plan = plan_dataset(data)
    started = time.perf_counter()
    reached: dict[str, Any] = {}

    def watch(record: dict[str, Any]) -> None:
        score = record.get("validation_dice", {}).get("mean", 0.0)
        if score >= GPU_DICE_TARGET:
            reached.update(epoch=record["epoch"], dice=score, seconds=time.perf_counter() - started)
            raise _ReachedError

    with tempfile.TemporaryDirectory() as folder, contextlib.suppress(_ReachedError):
        train_fold(
            data,
            plan,
            0,
            folder,
            device="cuda",
            epochs=epochs,
            iterations_per_epoch=iterations,
            progress=watch,
            workers=min(8, os.cpu_count() or 1),
        )
    if not reached:
        return {"measured": True, "reached": False, "seconds": time.perf_counter() - started, "epochs": epochs}
    return {
        "measured": True,
        "reached": True,
        "gpu": torch.cuda.get_device_name(0),
        **reached,
        "iterations_per_epoch": iterations,
        "batch_size": plan.batch_size,
        "filters": plan.network.filters,
    }


def cv_figures(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "cv_summary.json").read_text())
    package = load_package(run / "fold_0" / "model").manifest
    return {
        "classes": {c["name"]: c["dice"] for c in summary["overall"]["classes"]},
        "foreground_mean": summary["overall"]["foreground_mean"]["dice"],
        "class_rows": [*summary["overall"]["classes"], summary["overall"]["foreground_mean"]],
        "tolerance_mm": summary["overall"]["tolerance_mm"],
        "folds": summary["folds"],
        "postprocessing": summary["postprocessing"],
        "schedule": {
            "epochs": package.metrics["epochs"],
            "iterations_per_epoch": package.metrics.get("iterations_per_epoch"),
            "batch_size": package.plan["batch_size"],
            "filters": package.plan["network"]["filters"],
            "patch_size": package.plan["patch_size"],
            "device": package.metrics.get("device"),
            "precision": package.metrics.get("precision"),
            "fold_0_training_seconds": package.metrics.get("training_seconds"),
        },
    }


def _format(summary: dict[str, Any], digits: int) -> str:
    mean, sd, low, high = (f"{summary[key]:.{digits}f}" for key in ("mean", "sd", "ci_low", "ci_high"))
    return f"{mean} ± {sd} [{low}, {high}]"


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def goals(cv: dict[str, Any], rows: list[dict[str, Any]], gpu: dict[str, Any]) -> list[tuple[bool | None, str]]:
    verdicts: list[tuple[bool | None, str]] = []
    for name in ("Anterior", "Posterior"):
        mean = cv["classes"][name]["mean"]
        verdicts.append((mean >= CV_GOAL, f"5-fold CV mean Dice, {name}: {mean:.3f} (goal >= {CV_GOAL})"))
    for device in sorted({r["device"] for r in rows}):
        here = [r for r in rows if r["device"] == device]
        peer, ours = here[0], here[-1]
        speedup = ours["voxels_per_second"] / peer["voxels_per_second"]
        delta = ours["mean_dice"] - peer["mean_dice"]
        verdicts.append(
            (
                speedup >= SPEED_GOAL and abs(delta) <= DICE_TOLERANCE,
                f"{device}: Vesalius default {speedup:.2f}x MONAI fp32's voxels/s (goal >= {SPEED_GOAL}x), "
                f"mean Dice {ours['mean_dice']:.4f} vs {peer['mean_dice']:.4f} (goal within {DICE_TOLERANCE})",
            )
        )
    if not gpu.get("measured"):
        verdicts.append(
            (None, f"GPU wall time to mean Dice {GPU_DICE_TARGET} on fold 0: not measured ({gpu['reason']})")
        )
    else:
        text = (
            f"{gpu['seconds']:.0f} s (epoch {gpu['epoch']}, Dice {gpu['dice']:.3f}, {gpu['gpu']})"
            if gpu["reached"]
            else f"not reached in {gpu['epochs']} epochs ({gpu['seconds']:.0f} s)"
        )
        verdicts.append((None, f"GPU wall time to mean Dice {GPU_DICE_TARGET} on fold 0: {text}"))
    return verdicts


def render(result: dict[str, Any]) -> str:
    cv, rows = result["cross_validation"], result["inference"]
    schedule = cv["schedule"]
    lines = [
        f"<!-- {NAME}:start -->",
        "## Hippocampus segmentation: cross-validation, and inference against MONAI",
        "",
        f"Written by `benchmarks/{NAME}.py` on {result['date']}; do not edit by hand. Command: `{result['command']}`.",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['usable_cores']} cores, "
        f"{result['machine']['memory_gib']} GiB; torch {torch.__version__}. Load average before/after: "
        f"{result['load_before']:.2f} / {result['load_after']:.2f}.",
        "",
        f"### {len(cv['folds'])}-fold cross-validation (every case predicted once by the fold that held it out)",
        "",
        f"Trained by `make model-hippocampus`: DynUNet filters {schedule['filters']}, patch {schedule['patch_size']}, "
        f"batch {schedule['batch_size']}, {schedule['epochs']} epochs, on {schedule['device']} in "
        f"{schedule['precision']} (fold 0 took {schedule['fold_0_training_seconds'] or 0:.0f} s of training steps). "
        "Mirror TTA, Gaussian blending; largest-component post-processing where CV chose it "
        f"({cv['postprocessing']}).",
        "",
        f"| Class | Dice mean ± SD [95% CI] | HD95 mm | Surface Dice ({cv['tolerance_mm']:g} mm) | n |",
        "|---|---|---|---|---|",
    ]
    for row in cv["class_rows"]:
        cells = [_format(row["dice"], 3), _format(row["hd95"], 2), _format(row["surface_dice"], 3)]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {row['dice']['n']} |")
    lines += [
        "",
        f"### Inference, fold 0 weights on its {rows[0]['cases']} held-out cases ({rows[0]['voxels']:,} voxels), "
        "patch from the plan, overlap 0.5, Gaussian, 8 mirrored copies",
        "",
        "Median of the passes over all cases; each case preprocessed once beforehand, so both sides get the same "
        "tensors. Dice against the reference labels on the model grid (1 mm, the images' own).",
        "",
        "| Device | Method | Seconds | Mvoxels/s | vs MONAI fp32 | Mean Dice | Anterior | Posterior |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        peer = next(r for r in rows if r["device"] == row["device"])
        lines.append(
            f"| {row['device']} | {row['method']} | {row['seconds']:.2f} | {row['voxels_per_second'] / 1e6:.2f} | "
            f"{row['voxels_per_second'] / peer['voxels_per_second']:.2f}x | {row['mean_dice']:.4f} | "
            f"{row['dice']['Anterior']:.4f} | {row['dice']['Posterior']:.4f} |"
        )
    lines += ["", "Goals:", ""]
    for passed, text in result["goals"]:
        verdict = "INFO" if passed is None else ("PASS" if passed else "FAIL")
        lines.append(f"- **{verdict}** {text}")
    lines.append(f"<!-- {NAME}:end -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", type=Path, default=REPO / "runs" / "hippocampus", help="training folder (make model-hippocampus)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cases", type=int, default=None, help="at most this many held-out cases (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-epochs", type=int, default=100)
    parser.add_argument("--gpu-iterations", type=int, default=250)
    args = parser.parse_args()
    if not (args.run / "cv_summary.json").is_file():
        print(f"{args.run}: no cv_summary.json; run `make model-hippocampus` first", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    cv = cv_figures(args.run)
    rows = inference_comparison(args.run, args.data, args.cases, args.repeats)
    gpu = gpu_time_to_dice(args.data, args.gpu_epochs, args.gpu_iterations)
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "cd "
        + str(REPO)
        + " && .venv/bin/python "
        + shlex.join(["benchmarks/" + Path(__file__).name, *sys.argv[1:]]),
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "cross_validation": cv,
        "inference": rows,
        "gpu_time_to_dice": gpu,
    }
    result["goals"] = goals(cv, rows, gpu)
    publish(NAME, result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
