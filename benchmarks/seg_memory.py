"""Peak memory of `vesalius predict` on a 512 x 512 x 600 CT on the CPU (goal: within 8 GB).

A synthetic chest-sized CT (int16 HU, 0.7 x 0.7 x 1.0 mm, an uncompressed NIfTI) is segmented by a model
package with an nnU-Net-sized 3d_fullres network (6 stages, 32-320 filters, patch 128^3, 3 classes) and
random weights: memory does not depend on the weight values. The command is the real CLI in a fresh process;
its peak resident set (``ru_maxrss``) is what counts. Overlap 0 (``--overlap 0``) keeps the run to minutes on
a 2-core CPU; the volume-sized buffers, which set the peak, are the same at any overlap (checked in the same
run on a 256 x 256 x 300 crop at overlap 0 and 0.5).

Writes ``benchmarks/results/seg_memory.json`` and its section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from _common import REPO, machine, publish
from vesalius.engines.common.package import save_package
from vesalius.engines.common.plan import (
    AugmentationPlan,
    CTNormalization,
    NetworkPlan,
    SegmentationPlan,
)

NAME = "seg_memory"
SHAPE = (512, 512, 600)
SPACING = (0.7, 0.7, 1.0)
LIMIT_GB = 8.0


def ct_plan() -> SegmentationPlan:
    """What nnU-Net's 3d_fullres planner gives a chest or abdomen CT set at this spacing."""
    stages = 6
    return SegmentationPlan(
        dataset_name="SyntheticCT",
        fingerprint_hash="sha256:" + "0" * 64,
        modalities=["CT"],
        labels={0: "background", 1: "organ", 2: "lesion"},
        num_classes=3,
        target_spacing=SPACING,
        anisotropic=False,
        anisotropic_axis=None,
        median_shape=SHAPE,
        normalization=[CTNormalization(clip=(-1000.0, 1000.0), mean=50.0, std=300.0)],
        patch_size=(128, 128, 128),
        batch_size=2,
        memory_budget_gb=8.0,
        network=NetworkPlan(
            in_channels=1,
            out_channels=3,
            kernel_size=[(3, 3, 3)] * stages,
            strides=[(1, 1, 1)] + [(2, 2, 2)] * (stages - 1),
            filters=[min(32 * 2**s, 320) for s in range(stages)],
            deep_supr_num=stages - 2,
        ),
        augmentation=AugmentationPlan(rotation_degrees=(30.0, 30.0, 30.0)),
    )


def synthetic_ct(shape: tuple[int, int, int], path: Path) -> Path:
    """Air outside an elliptic body of soft tissue (40 HU) with two lungs (-850 HU), noise 20 HU."""
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (i / 0.9) ** 2 + (j / 0.7) ** 2 < 1
    lungs = ((i - 0.4) / 0.3) ** 2 + (j / 0.4) ** 2 < 1
    lungs |= ((i + 0.4) / 0.3) ** 2 + (j / 0.4) ** 2 < 1
    plane = np.where(body, np.where(lungs, -850, 40), -1000).astype(np.int16)
    volume = np.empty(shape, dtype=np.int16)
    for k in range(shape[2]):
        volume[:, :, k] = plane + rng.normal(0, 20, plane.shape).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.diag([*SPACING, 1.0])), path)
    return path


def run_predict(package: Path, image: Path, out: Path, overlap: float) -> dict[str, Any]:
    """`vesalius predict` in a fresh process: wall time and peak resident set."""
    command = [str(REPO / ".venv" / "bin" / "vesalius"), "predict", str(package), str(image), "-o", str(out)]
    command += ["--no-tta", "--device", "cpu", "--overlap", str(overlap)]
    started = time.perf_counter()
    pid = os.posix_spawn(command[0], command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {os.waitstatus_to_exitcode(status)}")
    written = nib.load(out / image.name)
    return {
        "shape": list(written.shape),
        "overlap": overlap,
        "seconds": wall,
        "peak_rss_gb": usage.ru_maxrss / 1024**2,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        plan = ct_plan()
        torch.manual_seed(0)
        package = save_package(
            work / "package",
            name="synthetic-ct",
            version="0.0.1",
            task="segmentation",
            labels=plan.labels,
            plan=plan,
            metrics={},
            data_fingerprint={},
            state_dict=plan.network.build().state_dict(),
            weights_dtype=torch.float16,
        )
        crop = (256, 256, 300)
        small = synthetic_ct(crop, work / "crop.nii")
        checks = [run_predict(package, small, work / f"out{o}", o) for o in (0.0, 0.5)]
        print(json.dumps(checks, indent=1), flush=True)
        shutil.rmtree(work / "out0.0")
        shutil.rmtree(work / "out0.5")
        full = run_predict(package, synthetic_ct(SHAPE, work / "ct.nii"), work / "out", 0.0)
        print(json.dumps(full, indent=1), flush=True)
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"cd {REPO} && .venv/bin/python benchmarks/{NAME}.py",
        "machine": machine(),
        "full": full,
        "overlap_check": checks,
    }
    verdict = "PASS" if full["peak_rss_gb"] <= LIMIT_GB else "FAIL"
    same = abs(checks[0]["peak_rss_gb"] - checks[1]["peak_rss_gb"])
    section = "\n".join(
        [
            f"<!-- {NAME}:start -->",
            "## Segmentation inference memory: a 512 x 512 x 600 CT on the CPU",
            "",
            f"Written by `benchmarks/{NAME}.py` on {result['date']}; do not edit by hand. "
            f"Command: `{result['command']}`.",
            "",
            f"Machine: {result['machine']['cpu']}, {result['machine']['usable_cores']} cores, "
            f"{result['machine']['memory_gib']} GiB. `vesalius predict` in a fresh process, nnU-Net-sized network "
            "(6 stages, 32-320 filters, patch 128^3, 3 classes, random weights), no TTA, default precision.",
            "",
            "| Input | Overlap | Peak RSS GB | Wall s | CPU s |",
            "|---|---|---|---|---|",
            *[
                f"| {' x '.join(map(str, r['shape']))} | {r['overlap']} | {r['peak_rss_gb']:.2f} | "
                f"{r['seconds']:.0f} | {r['cpu_seconds']:.0f} |"
                for r in [*checks, full]
            ],
            "",
            f"- **{verdict}** 512 x 512 x 600 CT: peak {full['peak_rss_gb']:.2f} GB (goal <= {LIMIT_GB} GB)",
            f"- **INFO** overlap does not change the peak: {same:.2f} GB apart at overlap 0 and 0.5 on the crop",
            f"<!-- {NAME}:end -->",
        ]
    )
    publish(NAME, result, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
