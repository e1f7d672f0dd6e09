"""`make demo`: the PACS gateway end to end on loopback, with the shipped models and real DICOM.

A stand-in PACS (a pynetdicom Storage SCP, so no DCMTK or Orthanc is needed) sends two radiographs from
pydicom-data to a running `vesalius serve` gateway: the chest one is routed to the cxr-pneumonia model, the
extremity one matches no rule and is skipped. The SR comes back to the PACS by C-STORE, the FHIR bundle lands in
a folder, and the REST API is queried as a user would with curl. No network beyond loopback, no user data.
Each step prints what it does, so the output doubles as a tutorial.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pydicom
from pydicom.data import get_testdata_file

from vesalius.api.auth import new_api_key
from vesalius.cli.gateway import build_processor, build_service
from vesalius.core.errors import VesaliusError
from vesalius.gateway.audit import AuditLog
from vesalius.gateway.config import GatewayConfig, load_config
from vesalius.gateway.scp import ScpSettings, StorageSCP
from vesalius.gateway.scu import DicomPeer, send_instances
from vesalius.gateway.service import GatewayService
from vesalius.gateway.storage import InstanceStore

MODELS = Path(__file__).resolve().parents[3] / "models"
"""The repository's shipped model packages (the demo runs from a source checkout, as `make demo` does)."""
STUDIES = {"RG1_UNCR.dcm": "chest radiograph", "RG3_UNCR.dcm": "extremity radiograph"}
"""pydicom-data files sent to the gateway: CR CHEST (1955x1841) is routed, CR EXTREMITY is not."""
GATEWAY_AE = "VESALIUS"
PACS_AE = "DEMOPACS"
HOST = "127.0.0.1"
QUIET_SECONDS = 2.0
TIMEOUT_SECONDS = 180.0
MARKER = ".vesalius-demo"
"""Marks a folder the demo made, so a rerun may clear its own outputs and nothing else."""

T = TypeVar("T")


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to do."""


def _testdata(name: str) -> Path:
    found = get_testdata_file(name, download=False)  # never download: the demo must run offline
    if found is None:
        raise DemoError(f"{name} is missing from pydicom-data; run `make setup` to install it")
    return Path(str(found))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _prepare(output: Path) -> None:
    """Start from a clean demo folder: clear what an earlier run wrote, refuse a folder the demo did not make."""
    output.mkdir(parents=True, exist_ok=True)
    if not (output / MARKER).exists():
        if any(output.iterdir()):
            raise DemoError(f"{output} is not empty and was not made by the demo; remove it or choose another folder")
        (output / MARKER).write_text("written by python -m vesalius.cli.demo\n")
    for name in ("data", "pacs"):
        shutil.rmtree(output / name, ignore_errors=True)


def _wait(check: Callable[[], T | None], what: str, deadline: float) -> T:
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.25)


def write_config(
    output: Path, *, dicom_port: int, api_port: int, pacs: DicomPeer, key_hash: str, models: dict[str, Path]
) -> Path:
    """The gateway's vesalius.toml: loopback ports, storage under ``output``, the shipped models and their routes."""
    model_lines = "\n".join(f"{name} = {json.dumps(str(path))}" for name, path in models.items())
    routes = """
[[route]]
name = "chest radiograph"
modality = "CR"
body_part = "CHEST"
models = ["cxr-pneumonia"]

[[route]]
name = "chest radiograph (DX)"
modality = "DX"
body_part = "CHEST"
models = ["cxr-pneumonia"]
"""
    if "lung-nodules" in models:
        routes += '\n[[route]]\nname = "chest CT"\nmodality = "CT"\nmin_instances = 20\nmodels = ["lung-nodules"]\n'
    text = f"""# Written by `python -m vesalius.cli.demo`; serve it again with `vesalius serve --config <this file>`.
[dicom]
ae_title = "{GATEWAY_AE}"
host = "{HOST}"
port = {dicom_port}
allowed_calling_aes = ["{PACS_AE}"]
min_free_mb = 16

[storage]
root = "data"

[study]
quiet_seconds = {QUIET_SECONDS}

[queue]
backend = "sqlite"
path = "data/queue.sqlite3"
retries = 1
retry_delay_seconds = 1.0

[workers]
count = 1

[models]
{model_lines}
{routes}
[delivery]
dicom = "{pacs}"
fhir_folder = "data/fhir"

[api]
host = "{HOST}"
port = {api_port}

[api.api_keys]
demo = "{key_hash}"

[audit]
path = "data/audit.jsonl"
"""
    path = output / "vesalius.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _models() -> dict[str, Path]:
    """The shipped packages that fit pydicom-data; hippocampus needs cropped MR that pydicom-data lacks."""
    cxr = MODELS / "cxr-pneumonia" / "package"
    if not (cxr / "package.json").is_file():
        raise DemoError(f"{cxr} is missing: the demo runs from a Vesalius source checkout with its models/")
    models = {"cxr-pneumonia": cxr}
    nodules = MODELS / "lung-nodules" / "package"
    if (nodules / "package.json").is_file():
        models["lung-nodules"] = nodules
    return models


def _describe(path: Path) -> tuple[str, str]:
    """Study UID and a short description (modality, body part, size): what routing looks at."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), f"{ds.Modality} {ds.get('BodyPartExamined', '?')} {ds.Rows}x{ds.Columns}"


def _received(pacs_root: Path) -> list[str]:
    """One line per object the PACS stored: SOP class, modality, series UID, file."""
    lines = []
    for path in sorted(pacs_root.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        lines.append(f"{ds.SOPClassUID.name} ({ds.Modality}), series {ds.SeriesInstanceUID}\n      {path}")
    return lines


def _conclusion(bundle_path: Path) -> str:
    document = json.loads(bundle_path.read_text(encoding="utf-8"))
    for entry in document.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "DiagnosticReport":
            return str(resource.get("conclusion", ""))
    raise DemoError(f"{bundle_path} holds no DiagnosticReport")


def _series_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for series in summary.get("series", []):
        head = f"series {series['series_instance_uid']} ({series.get('modality', '?')})"
        if "skipped" in series:
            lines.append(f"{head}: skipped, {series['skipped']}")
        for model in series.get("models", []):
            found = model["findings"]
            if "class" in found:
                result = f"{found['class']}, probability {found['probability']:.3f} (calibrated)"
            else:
                result = json.dumps(found)
            lines.append(f"{head}: {model['name']} {model['version']} -> {result}")
    return lines


def _curl(client: httpx.Client, key: str | None, route: str) -> tuple[str, httpx.Response]:
    """The curl command a user would type, and the live answer to the same request."""
    header = f"-H 'X-API-Key: {key}' " if key else ""
    response = client.get(route, headers={"X-API-Key": key} if key else {})
    return f"curl {header}{client.base_url}{route.lstrip('/')}", response


def run(output: Path, timeout: float = TIMEOUT_SECONDS) -> None:
    """The whole demo; raises DemoError (or a VesaliusError) when a step fails."""
    deadline = time.monotonic() + timeout
    output = output.resolve()
    files = {name: _testdata(name) for name in STUDIES}
    models = _models()
    _prepare(output)
    print("Vesalius demo: the PACS gateway on loopback, real DICOM from pydicom-data, no network, no user data.")
    print("Research software: the findings below are model outputs, not diagnoses.\n")

    with StorageSCP(
        ScpSettings(ae_title=PACS_AE, host=HOST, port=0, allowed_calling_aes=[GATEWAY_AE], min_free_bytes=0),
        InstanceStore(output / "pacs", 0),
    ) as pacs_scp:
        pacs = DicomPeer(PACS_AE, HOST, pacs_scp.port)
        print(f"1. A stand-in PACS: {pacs}, a pynetdicom Storage SCP storing under {output / 'pacs'}")

        key, key_hash = new_api_key()
        config_path = write_config(
            output, dicom_port=_free_port(), api_port=_free_port(), pacs=pacs, key_hash=key_hash, models=models
        )
        print(f"2. Gateway configuration: {config_path}")
        print(f"   models: {', '.join(models)}; API key for this run: {key} (the file keeps only its SHA-256)")
        if "lung-nodules" in models:
            print("   lung-nodules is routed (CT, >= 20 slices), but pydicom-data has no chest CT: not demonstrated.")
        print("   hippocampus is not routed: it needs cropped hippocampus MR, which pydicom-data does not have.")

        config = load_config(config_path)
        processor, hashes = build_processor(config)
        with build_service(config, processor, hashes) as service:
            gateway = DicomPeer(GATEWAY_AE, HOST, service.dicom_port)
            workers = config.workers.count
            print(f"3. Gateway running: DICOM {gateway}, REST http://{HOST}:{service.api_port}, {workers} worker(s)")
            job_ids = _send_and_route(service, gateway, files, deadline)
            base = f"http://{HOST}:{service.api_port}/"
            with httpx.Client(base_url=base, timeout=10.0) as client:
                print("6. A worker runs the model and delivers the results; GET /v1/jobs/{id} is polled until done:")
                results = [_show_job(client, key, job_id, deadline) for job_id in job_ids]
                _show_outputs(output / "pacs", config)
                _show_api(client, key, job_ids[0], results[0])
        print(f"\nGateway stopped. To run it again: vesalius serve --config {config_path}")
        print(f"Everything is under {output}/")


def _send_and_route(service: GatewayService, gateway: DicomPeer, files: dict[str, Path], deadline: float) -> list[str]:
    """Steps 4 and 5: C-STORE each file as the PACS would, wait until the gateway has routed every study;
    returns the ids of the jobs queued."""
    print(f"4. {PACS_AE} sends two studies to {gateway} by C-STORE:")
    described: dict[str, str] = {}
    for name, path in files.items():
        report = send_instances([path], gateway, calling_ae=PACS_AE)
        if not report.ok:
            raise DemoError(f"the gateway refused {name}: {report.failed}")
        study_uid, description = _describe(path)
        described[study_uid] = description
        print(f"   {name:<13} {description:<23} {STUDIES[name]}: stored")

    print(f"5. Each study is complete after {QUIET_SECONDS:g} s without new instances; then it is routed:")
    submitted = _wait(
        lambda: list(service.submitted) if len(service.submitted) >= len(files) else None,
        "the gateway to route both studies",
        deadline,
    )
    job_ids = []
    for outcome in submitted:
        head = f"   study {outcome.study_uid} ({described.get(outcome.study_uid, '?')})"
        if outcome.record is None:
            print(f"{head}: no routing rule matches; skipped")
        else:
            job_ids.append(outcome.record.job_id)
            print(f"{head}: job {outcome.record.job_id} -> {', '.join(outcome.record.spec.models)}")
    if not job_ids:
        raise DemoError("no study was queued: the chest radiograph should match the CR CHEST rule")
    return job_ids


def _show_outputs(pacs_root: Path, config: GatewayConfig) -> None:
    """Step 7: what the PACS received, the FHIR DiagnosticReport and the audit record."""
    print("7. What came back:")
    print("   the PACS received:")
    received = _received(pacs_root)
    if not received:
        raise DemoError(f"the PACS received no result under {pacs_root}")
    for line in received:
        print(f"    - {line}")
    folder = config.delivery.fhir_folder
    bundles = sorted(folder.glob("DiagnosticReport-*.json")) if folder is not None else []
    if not bundles:
        raise DemoError(f"no FHIR bundle in {folder}")
    for bundle in bundles:
        print(f"   FHIR DiagnosticReport: {bundle}\n      conclusion: {_conclusion(bundle)}")
    print(f"   audit log {config.audit.path} (UIDs, model and hash, no PHI):")
    fields = {"job_id", "requester", "outcome", "study_instance_uid", "models", "output_uids"}
    for entry in AuditLog(config.audit.path).read():
        print(f"      {entry.model_dump_json(include=fields)}")


def _show_api(client: httpx.Client, key: str, job_id: str, results: dict[str, Any]) -> None:
    """Step 8: the curl commands a user can type, each run here against the live API with its answer."""
    print("8. The REST API; these ran against the live service:")
    for route, needs_key in (("/v1/health", False), (f"/v1/jobs/{job_id}", True), (f"/v1/jobs/{job_id}/results", True)):
        command, response = _curl(client, key if needs_key else None, route)
        print(f"   $ {command}\n     -> {response.status_code} {_brief(response)}")
    sr_name = next((f["name"] for f in results["files"] if f["kind"] == "sr"), "<name>")
    print(f"   $ curl -OJ -H 'X-API-Key: {key}' {client.base_url}v1/jobs/{job_id}/results/{sr_name}")
    print(f"   OpenAPI docs: {client.base_url}docs")


def _show_job(client: httpx.Client, key: str, job_id: str, deadline: float) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until the job is done; print its findings per series and return its results
    listing, or fail with the job's error."""

    def finished() -> dict[str, Any] | None:
        view: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": key}).json()
        return view if view.get("state") in ("done", "failed") else None

    view = _wait(finished, f"job {job_id} to finish", deadline)
    if view["state"] != "done":
        raise DemoError(f"job {job_id} failed after {view['attempts']} attempt(s): {view['error']}")
    results: dict[str, Any] = client.get(f"/v1/jobs/{job_id}/results", headers={"X-API-Key": key}).json()
    print(f"   job {job_id}: {view['state']} after {view['attempts']} attempt(s)")
    for line in _series_lines(results["summary"]):
        print(f"      {line}")
    return results


def _brief(response: httpx.Response) -> str:
    """A one-line digest of an API answer, so the tutorial stays readable."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:80]
    if "files" in body:
        return "files: " + ", ".join(f"{f['kind']} {f['name']}" for f in body["files"])
    if "state" in body:
        return f"state {body['state']}, models {body['models']}, requester {body['requester']}"
    if "status" in body:
        return f"status {body['status']}, queue {body.get('queue')}"
    return json.dumps(body)[:100]


def main(argv: list[str] | None = None) -> int:
    """``python -m vesalius.cli.demo [OUTDIR]``: 0 when every step worked, 1 with a message otherwise."""
    arguments = sys.argv[1:] if argv is None else argv
    output = Path(arguments[0]) if arguments else Path("demo-output")
    try:
        run(output)
    except (DemoError, VesaliusError) as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
