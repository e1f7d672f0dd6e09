"""`make demo`: run `vesalius info` and `vesalius convert` on real DICOM that ships with pydicom-data.

No network and no user data: the inputs are the test files installed by pydicom and pydicom-data.
Each step prints the exact command, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pydicom.data import get_testdata_file

CT_SERIES_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
"""'SmartScore - Gated 0.5 sec', a 5-slice CT series in pydicom's dicomdirtests tree."""
GAPPED_SERIES_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
"""'Routine Brain': 4 slices from a longer series, so Vesalius must refuse it and say why."""


def _testdata(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    if found is None:
        raise SystemExit(f"demo: {name} is missing; run `make setup` to install pydicom-data")
    return Path(str(found))


def _run(arguments: list[str], expect_failure: bool = False) -> None:
    executable = shutil.which("vesalius", path=str(Path(sys.executable).parent)) or "vesalius"
    print(f"\n$ vesalius {' '.join(arguments)}", flush=True)
    completed = subprocess.run([executable, *arguments], check=False)
    if (completed.returncode != 0) != expect_failure:
        raise SystemExit(f"demo: `vesalius {' '.join(arguments)}` exited with {completed.returncode}")


def main(output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    studies = _testdata("CT_small.dcm").parent / "dicomdirtests"
    print("Vesalius demo: real DICOM from pydicom-data, no network, no user data.")
    print("1. A folder of six studies (CT, CR, MR), DICOMDIR files and text files mixed in:")
    _run(["info", str(studies), "--show-skipped", "3"])
    print("\n2. Convert one CT series (slices sorted along the normal, HU applied) to NIfTI:")
    _run(["convert", str(studies), str(output / "ct_series.nii.gz"), "--series", CT_SERIES_UID])
    print("\n3. A series with missing slices is refused with the reason, not converted silently:")
    _run(["convert", str(studies), str(output / "refused.nii.gz"), "--series", GAPPED_SERIES_UID], True)
    print("\n4. Compressed and multi-frame objects: JPEG 2000, JPEG-LS, RLE, enhanced multi-frame MR:")
    for name in ("MR2_J2KR.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "emri_small.dcm"):
        _run(["convert", str(_testdata(name)), str(output / (Path(name).stem + ".nii.gz"))])
    print("\n5. Read back what was written:")
    _run(["info", str(output / "ct_series.nii.gz")])
    print(f"\nDone: NIfTI files are in {output}/")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-output"))
