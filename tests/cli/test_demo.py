"""`make demo` stays runnable: the gateway gets two real radiographs over DICOM, runs the chest one, skips the other,
and the SR reaches the stand-in PACS while the FHIR bundle lands in its folder; nothing keeps running afterwards."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from vesalius.cli import demo

CHEST = get_testdata_file("RG1_UNCR.dcm", download=False)


@pytest.mark.skipif(CHEST is None, reason="pydicom-data is not installed")
@pytest.mark.skipif(not (demo.MODELS / "cxr-pneumonia" / "package" / "package.json").is_file(), reason="no model")
def test_demo_runs_the_chest_radiograph_through_the_gateway(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    threads_before = {thread.ident for thread in threading.enumerate()}
    out = tmp_path / "demo"
    assert demo.main([str(out)]) == 0, capsys.readouterr().err

    printed = capsys.readouterr().out
    chest_study = str(pydicom.dcmread(str(CHEST), stop_before_pixels=True).StudyInstanceUID)
    received = [pydicom.dcmread(path, stop_before_pixels=True) for path in (out / "pacs").rglob("*.dcm")]
    assert [(ds.Modality, str(ds.StudyInstanceUID)) for ds in received] == [("SR", chest_study)]
    (bundle,) = (out / "data" / "fhir").glob("DiagnosticReport-*.json")
    document = json.loads(bundle.read_text())
    assert document["resourceType"] == "Bundle"
    assert any(entry["resource"]["resourceType"] == "DiagnosticReport" for entry in document["entry"])
    skipped = [line for line in printed.splitlines() if "no routing rule matches; skipped" in line]
    assert len(skipped) == 1
    assert "CR EXTREMITY" in skipped[0]
    assert "cxr-pneumonia 0.1.0 -> " in printed
    assert "curl -H 'X-API-Key: " in printed

    deadline = time.monotonic() + 10
    while {t.ident for t in threading.enumerate()} - threads_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {t.ident for t in threading.enumerate()} <= threads_before
    assert multiprocessing.active_children() == []


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert demo.main([str(tmp_path)]) == 1
    assert "not made by the demo" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_demo_names_a_missing_pydicom_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "STUDIES", {"NOT_IN_PYDICOM_DATA.dcm": "absent"})
    assert demo.main([str(tmp_path / "demo")]) == 1
    assert "NOT_IN_PYDICOM_DATA.dcm is missing from pydicom-data; run `make setup`" in capsys.readouterr().err
