"""Orthanc (the Debian package) as the PACS of the tests, started on free ports with a throw-away database.

Orthanc 1.10 binds every interface, so it runs only where nothing outside can reach it: in the private network
namespace of ``.ci/run`` (only loopback up). Elsewhere the tests that need it skip with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.dicom_peers import HOST, free_port, stop_process


def network_is_private() -> bool:
    """True inside a network namespace whose only interface is loopback."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@dataclass(frozen=True)
class RunningOrthanc:
    ae_title: str
    dicom_port: int
    url: str
    log: Path

    def get(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=30.0)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, content: bytes | str) -> Any:
        response = httpx.post(self.url + path, content=content, timeout=60.0)
        response.raise_for_status()
        return response.json()

    def upload(self, files: list[Path]) -> None:
        for path in files:
            self.post("/instances", path.read_bytes())

    def study_id(self, study_uid: str) -> str:
        found = [item["ID"] for item in self.post("/tools/lookup", study_uid) if item["Type"] == "Study"]
        assert found, f"Orthanc holds no study {study_uid}"
        return str(found[0])

    def series_of(self, study_uid: str) -> list[dict[str, Any]]:
        return list(self.get(f"/studies/{self.study_id(study_uid)}/series"))


@contextmanager
def orthanc(folder: Path, modalities: dict[str, tuple[str, int]] | None = None) -> Iterator[RunningOrthanc]:
    """Orthanc with ``modalities`` (name -> (AE title, port) on loopback) it may send to; stopped on exit."""
    executable = shutil.which("Orthanc")
    if executable is None:
        pytest.skip("Orthanc is not installed (.ci/run installs the Debian package)")
    if not network_is_private():
        pytest.skip("Orthanc binds every interface: it runs only in a private network namespace (.ci/run)")
    dicom_port, http_port = free_port(), free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "vesalius-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomModalities": {name: [ae, HOST, port] for name, (ae, port) in (modalities or {}).items()},
        "Plugins": [],
        "StableAge": 1,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [executable, str(path)], stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"}
        )
    running = RunningOrthanc("ORTHANC", dicom_port, f"http://{HOST}:{http_port}", log)
    try:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                running.get("/system")
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Orthanc did not start: {log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)
        yield running
    finally:
        stop_process(process, timeout=10)
