"""Distilled and pruned students of the shipped models, each against its original in one run on this CPU.

For each of models/cxr-pneumonia and models/hippocampus (``distill_package`` and ``prune_package``, the code
behind ``vesalius distill`` and ``vesalius prune``):
- *distilled*: a narrower student trained on fold 0's training cases with the teacher's soft targets
  (T = 4 for the classifier, 1 for the segmenter; alpha = 0.5) and a feature hint at the last stage, and the same
  student trained on the labels alone for the same time (what the teacher adds);
- *pruned*: half the channels of every layer removed by group L1 norm, scored as is, then fine-tuned.

Both are scored on fold 0's held-out cases with the original: cxr-pneumonia on the 1,043 evaluation images its own
figures come from (unseen by every model here); hippocampus on fold 0's validation cases, which the shipped model
was trained on (it saw every case), so its Dice there is optimistic and the students' is not.
Training is shortened for this 2-core CPU (``--cxr-epochs``, ``--seg-epochs``, ``--seg-iterations``).
Students are kept in ``runs/deploy-students`` so ``deploy_models.py`` can measure them beside the other backends.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from _common import REPO, publish, run_header, section_head
from vesalius.deploy.compress import CompressionReport, distill_package, prune_package
from vesalius.deploy.distill import DistillationSettings

NAME = "deploy_students"
SHARED = REPO.parent / "shared" / "data"
STUDENTS = REPO / "runs" / "deploy-students"
MODELS: dict[str, dict[str, Any]] = {  # temperatures: the commands' defaults per task
    "cxr-pneumonia": {
        "data": SHARED / "cxr-pneumonia" / "train",
        "student": "resnet10,width=0.25",
        "settings": DistillationSettings(temperature=4.0, alpha=0.5, hint_weight=1.0),
    },
    "hippocampus": {
        "data": SHARED / "hippocampus",
        "student": "filters=8:16:32:64",
        "settings": DistillationSettings(temperature=1.0, alpha=0.5, hint_weight=1.0),
    },
}


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = MODELS[name]
    package = REPO / "models" / name / "package"
    segmentation = name == "hippocampus"
    epochs = args.seg_epochs if segmentation else args.cxr_epochs
    iterations = args.seg_iterations if segmentation else None
    fine_tune = max(1, epochs // 3)
    common = {"device": "cpu", "precision": "fp32", "runs": args.runs, "iterations": iterations}
    distilled: CompressionReport = distill_package(
        package,
        spec["student"],
        spec["data"],
        STUDENTS / name / "distilled",
        settings=spec["settings"],
        epochs=epochs,
        baseline=True,
        **common,
    )
    print(distilled.to_table(), flush=True)
    pruned: CompressionReport = prune_package(
        package, args.ratio, spec["data"], STUDENTS / name / "pruned", epochs=fine_tune, **common
    )
    print(pruned.to_table(), flush=True)
    return {
        "distilled": distilled.model_dump(),
        "pruned": pruned.model_dump(),
        "epochs": {"distilled": epochs, "fine_tune": fine_tune, "iterations_per_epoch": iterations},
    }


def render(result: dict[str, Any]) -> str:
    lines = section_head(NAME, "Deployment: distilled and pruned students against the shipped models", result)
    for name, model in result["models"].items():
        epochs = model["epochs"]
        length = f"{epochs['distilled']} epochs" + (
            f" of {epochs['iterations_per_epoch']} iterations" if epochs["iterations_per_epoch"] else ""
        )
        for method in ("distilled", "pruned"):
            report = CompressionReport.model_validate(model[method])
            how = (
                f"student `{report.settings['student']}` trained {length} with soft targets (T "
                f"{report.settings['temperature']}, alpha {report.settings['alpha']}) and a feature hint"
                if method == "distilled"
                else f"{report.settings['ratio']:.0%} of the channels removed (group L1), then fine-tuned "
                f"{epochs['fine_tune']} epochs"
            )
            lines += ["", f"**models/{name}, {method}**: {how}.", "", report.to_table()]
    lines += [
        "",
        "Training is shortened for this CPU (the originals trained 20 epochs, and 30 x 100 iterations on a GPU), so "
        "the students' figures are a floor for what the same commands reach with the originals' schedules.",
        f"<!-- {NAME}:end -->",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--cxr-epochs", type=int, default=9)
    parser.add_argument("--seg-epochs", type=int, default=20)
    parser.add_argument("--seg-iterations", type=int, default=50)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per model")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"absent: {SHARED}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    result = run_header(f".venv/bin/python benchmarks/{NAME}.py", load)
    result["versions"] = f"torch {torch.__version__}, torch-pruning {__import__('torch_pruning').__version__}"
    result["models"] = {name: run_model(name, args) for name in args.models}
    publish(NAME, result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
