"""`make demo` stays runnable: it converts real pydicom-data files and refuses the gapped series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib

from vesalius.cli import demo


def test_demo_writes_every_conversion_and_refuses_the_gapped_series(tmp_path: Path) -> None:
    demo.main(tmp_path)
    written = sorted(p.name for p in tmp_path.glob("*.nii.gz"))
    assert written == [
        "MR2_J2KR.nii.gz",
        "MR_small_RLE.nii.gz",
        "MR_small_jpeg_ls_lossless.nii.gz",
        "ct_series.nii.gz",
        "emri_small.nii.gz",
    ]
    assert nib.load(tmp_path / "ct_series.nii.gz").shape == (16, 16, 5)
    assert nib.load(tmp_path / "emri_small.nii.gz").shape == (64, 64, 10)
    assert not (tmp_path / "refused.nii.gz").exists()
