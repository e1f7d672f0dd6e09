"""Inference memory is bounded by a fixed number of bytes per voxel (the 512x512x600 CT figure is measured by
benchmarks/seg_memory.py); measured in a fresh process from its peak resident set, not timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BYTES_PER_VOXEL_LIMIT = 40
"""Three classes: preprocessed image 4, sliding-window output 3 x 4, then per class one map on the input grid 4,
the running maximum 4 and the labels 1, plus transients. MONAI's aggregation alone would add 3 x 4 + 4."""

FIXED_MMAP_THRESHOLD = "4194304"
"""glibc raises its mmap threshold after each large free, so volume-sized arrays can land on the heap, which it
keeps: the peak then measured the allocator's history (32 to 46 bytes per voxel across machines). A fixed
threshold maps every volume-sized array and returns it on free, so the figure is the live arrays'."""

CHILD = r"""
import json, sys
import numpy as np
from tests.engines.segmentation.test_predict import make_package
from tests.engines.segmentation.test_preprocess import tiny_plan
from vesalius.core.volume import Volume
from vesalius.engines.segmentation.predict import Predictor

def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

plan = tiny_plan(target_spacing=(1.0, 1.0, 1.0)).model_copy(update={"patch_size": (32, 32, 32)})
predictor = Predictor(make_package(__import__("pathlib").Path(sys.argv[1]), seed=0, plan=plan), tta=False)
shape = (160, 160, 96)
volume = Volume.from_geometry(np.random.default_rng(0).normal(0, 100, shape).astype(np.float32), spacing=(1, 1, 1))
predictor.predict(Volume.from_geometry(np.zeros((40, 40, 40), np.float32), spacing=(1, 1, 1)))  # warm-up
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current resident set
base = peak_kb()
labels = predictor.predict(volume)
print(json.dumps({"voxels": int(np.prod(shape)), "base_kb": base, "peak_kb": peak_kb()}))
"""


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_predict_peak_memory_per_voxel_is_bounded(tmp_path: Path) -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset and read the peak resident set")
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "package")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={
            "PYTHONPATH": str(root),
            "OMP_NUM_THREADS": "1",
            "PATH": "/usr/bin:/bin",
            "MALLOC_MMAP_THRESHOLD_": FIXED_MMAP_THRESHOLD,
        },
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    per_voxel = (figures["peak_kb"] - figures["base_kb"]) * 1024 / figures["voxels"]
    print(f"peak growth {per_voxel:.1f} bytes per voxel")
    assert 4 < per_voxel <= BYTES_PER_VOXEL_LIMIT, figures
