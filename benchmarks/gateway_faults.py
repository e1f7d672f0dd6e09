"""Gateway faults: workers killed mid-job, truncated and fuzzed files, the PACS stopped during result delivery.

Three runs, each against a fresh ``GatewayService`` (the one ``vesalius serve`` builds, from a ``vesalius.toml``
written to a temporary folder; one worker process; sqlite queue), all on loopback. Each reports instances lost
(goal 0), duplicate results (goal 0) and whether the service stayed up (goal: always; C-ECHO answered and the
configured workers alive).

a) **kill -9 mid-job.** ``--kill-studies`` (20) one-image CR studies are sent by DCMTK storescu at once; each is
   routed to the shipped ``models/cxr-pneumonia/package`` classifier (the real ``StudyProcessor``, SR and FHIR
   out, SR delivered to DCMTK ``storescp +uf``, which keeps every copy it receives under its own file name). The
   processor is wrapped (``SlowStart``) to note that a job started (a marker file naming the job and the worker
   pid) and then sleep 1 s before running the real processor, so that a kill always lands mid-job. Every job's
   first attempt is killed with SIGKILL (the pid checked against ``WorkerPool.pids``); the service's watcher
   restarts the worker (``ensure_alive``) and the lease reaper (lease 2 s) requeues the job. Afterwards: every
   job done, exactly one results folder per study, every SR received by storescp exactly once, nothing left in
   ``results/.partial``.
b) **Fuzzed files.** ``--fuzz-files`` (200) broken files interleaved with valid CT instances (one valid after every
   four broken ones), sent by pynetdicom with the file's bytes as they are (``STORE_SEND_CHUNKED_DATASET``; a
   file meta header is kept so the sender can name the SOP class), in batches of 25 on one association each, a
   C-ECHO after every batch. Kinds, in turn: truncated at a random byte of the data set (half the cuts before the
   pixel data); 1-4 random bytes flipped
   in the data set before the pixel data; 1-4 random bytes flipped in the pixel data (still well-formed DICOM:
   pixels are opaque, so storing it is right); random bytes after a valid preamble and file meta ("garbage with a
   DICM preamble"). An oracle decides which files are invalid: pydicom reads the whole file (force off) and every
   element decodes, the three UIDs are valid, and the pixel data has the length Rows x Columns x 2. Counted: valid
   instances stored (lost = valid sent - stored), invalid files refused (a failure status) or accepted, and the
   store checked for half-written files (a temporary file left, or a stored file that is not byte for byte the data
   set sent).
c) **Orthanc stopped during delivery.** ``--pacs-studies`` (10) CR studies as in a), results delivered to Orthanc
   (fixed ports; its storage and index kept across the restart); the processor wrapped as in a) with a 0.5 s start,
   so that the deliveries spread over a few seconds. Once the first SR is in Orthanc, Orthanc is
   stopped (SIGTERM), kept down ``--down-seconds`` (8) while jobs fail delivery and are retried by the queue with
   back-off (delay 1 s, doubling; 6 retries), then started again. Afterwards: every job done, each study's SR in
   Orthanc exactly once (one SR instance per study, with the SOP Instance UID the job wrote), no other instance.

Run from the repository root, in a private network namespace (Orthanc binds every interface):
``unshare --net -- bash -c 'ip link set lo up && .venv/bin/python benchmarks/gateway_faults.py'``.
It prints a table, writes ``benchmarks/results/gateway_faults.json`` and updates its section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt

from _common import REPO, publish, run_header, section_head, verdict
from _dicom_peers import (
    HOST,
    Peer,
    PeerError,
    command_line,
    free_port,
    gateway_config,
    http_json,
    orthanc,
    peer_env,
    peer_versions,
    require_private_network,
    storescp,
    storescu_args,
    wait_until,
)
from vesalius.cli.gateway import build_processor, build_service
from vesalius.gateway.config import GatewayConfig
from vesalius.gateway.jobs import JobOutput, JobRecord, JobSpec, JobState, Processor
from vesalius.gateway.scp import set_tcp_nodelay
from vesalius.gateway.scu import DicomPeer, echo
from vesalius.gateway.service import GatewayService
from vesalius.gateway.storage import check_uid

NAME = "gateway_faults"
CXR = REPO / "models" / "cxr-pneumonia" / "package"
WAIT_SECONDS = 240.0
SLOW_START_SECONDS = 1.0
OUTAGE_START_SECONDS = 0.5
FUZZ_KINDS = ("truncated", "header-flip", "pixel-flip", "garbage")


# --- data -----------------------------------------------------------------------------------------------------------


def _file(path: Path, sop_class: str, study: str, series: str, modality: str) -> FileDataset:
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Faults", "BENCH-FAULTS", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
    ds.ReferringPhysicianName, ds.Manufacturer = "", "Vesalius benchmark"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    return ds


def write_cr(folder: Path, seed: int, size: int = 160) -> tuple[str, Path]:
    """A one-image chest-radiograph-like CR study (bright body, darker lungs), new UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cr-{seed:03d}.dcm"
    study = generate_uid()
    ds = _file(path, ComputedRadiographyImageStorage, study, generate_uid(), "CR")
    ds.SeriesDescription, ds.BodyPartExamined, ds.PatientOrientation = "PA chest", "CHEST", ["L", "F"]
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = ((x - 0.3) ** 2 / 0.03 + (y - 0.5) ** 2 / 0.12 < 1) | ((x - 0.7) ** 2 / 0.03 + (y - 0.5) ** 2 / 0.12 < 1)
    pixels = np.where(lungs, 600, 2400) + np.random.default_rng(seed).normal(0, 60, (size, size))
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return study, path


def write_ct(path: Path, seed: int, study: str, series: str, size: int = 64) -> Path:
    """A small CT image (no routing rule takes it, so the fuzz run queues no work)."""
    ds = _file(path, CTImageStorage, study, series, "CT")
    ds.FrameOfReferenceUID = generate_uid()
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(seed)], [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.random.default_rng(seed).integers(0, 2000, (size, size), dtype=np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_offset(data: bytes) -> int:
    """Where the data set starts in a Part 10 file: after the preamble, 'DICM' and the group 2 elements."""
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return 144 + meta_length


def fuzz(source: Path, target: Path, kind: str, rng: random.Random) -> Path:
    data = bytearray(source.read_bytes())
    start = dataset_offset(bytes(data))
    pixel_tag = bytes.fromhex("e07f1000")  # (7FE0,0010) little endian
    pixels = data.find(pixel_tag, start)
    if kind == "truncated":  # half the cuts inside the header elements, half anywhere in the data set
        end = pixels + 12 if rng.random() < 0.5 else len(data) - 1
        data = data[: rng.randrange(start, end)]
    elif kind == "header-flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(start, pixels)] ^= rng.randrange(1, 256)
    elif kind == "pixel-flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(pixels + 12, len(data))] ^= rng.randrange(1, 256)
    else:  # garbage after a valid preamble and file meta
        data = data[:start] + bytearray(rng.randbytes(rng.randrange(16, 4096)))
    target.write_bytes(bytes(data))
    return target


def well_formed(path: Path) -> bool:
    """The oracle: the whole file parses and decodes, and the pixel data has the length the header says."""
    try:
        ds = pydicom.dcmread(path, force=False)
        for element in ds.iterall():
            _ = element.value
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            check_uid(keyword, ds.get(keyword))
        return len(ds.PixelData) == expected
    except Exception:
        return False


# --- the processor wrapper (module level: spawned workers import it) ------------------------------------------------


class SlowStart:
    """The real processor, after noting the start (``<job>.<pid>`` in ``markers``) and sleeping ``delay`` s."""

    def __init__(self, inner: Processor, markers: Path, delay: float) -> None:
        self.inner, self.markers, self.delay = inner, markers, delay

    def __call__(self, spec: JobSpec, output: Path) -> JobOutput:
        (self.markers / f"{spec.job_id}.{os.getpid()}.{time.time_ns()}").touch()
        time.sleep(self.delay)
        return self.inner(spec, output)


# --- helpers --------------------------------------------------------------------------------------------------------


def write_config(folder: Path, *, delivery: str | None, queue: str, route_cr: bool = True) -> GatewayConfig:
    """The service's ``vesalius.toml``: CR routed to the cxr-pneumonia classifier (unless not ``route_cr``)."""
    return gateway_config(
        folder,
        allowed_calling_aes=["BENCH", "STORESCU"],
        study="quiet_seconds = 0.5",
        queue=queue,
        models={"cxr": CXR},
        routes=[("chest radiographs", "CR", "cxr")] if route_cr else [],
        delivery=delivery,
    )


def storescu(port: int, files: list[Path], log: Path) -> None:
    args = storescu_args("STORESCU", "VESALIUS")
    with log.open("wb") as sink:
        done = subprocess.run(
            [*args, HOST, str(port), *map(str, files)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=peer_env(),
            timeout=120,
        )
    if done.returncode != 0:
        raise PeerError(f"storescu to our listener failed ({done.returncode}): {log.read_text()[-600:]}")


def records(service: GatewayService) -> list[JobRecord]:
    assert service.queue is not None
    queue = service.queue
    return [queue.get(s.record.job_id) for s in service.submitted if s.record is not None]


def settled(service: GatewayService, expected: int) -> bool:
    jobs = records(service)
    return len(jobs) >= expected and all(r.state in (JobState.DONE, JobState.FAILED) for r in jobs)


def service_up(service: GatewayService) -> bool:
    alive = service.pool is not None and len(service.pool.pids) == service.pool.n
    processes_alive = alive and all(_pid_alive(pid) for pid in service.pool.pids)  # type: ignore[union-attr]
    return processes_alive and echo(DicomPeer("VESALIUS", HOST, service.dicom_port), calling_ae="BENCH")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def results_folders(config: GatewayConfig) -> tuple[Counter[str], int]:
    """Published results folders per study UID, and entries left in ``.partial``."""
    root = config.storage.results
    per_study: Counter[str] = Counter()
    for manifest in root.glob("*/output.json"):
        spec_uid = None
        summary = json.loads(manifest.read_text())
        for series_uid in summary.get("input_series_uids", []):
            spec_uid = series_uid
        per_study[spec_uid or manifest.parent.name] += 1
    partial = root / ".partial"
    leftovers = sum(1 for _ in partial.iterdir()) if partial.is_dir() else 0
    return per_study, leftovers


# --- a) kill -9 mid-job ---------------------------------------------------------------------------------------------


def run_kills(work: Path, studies: int) -> dict[str, Any]:
    folder = work / "kills"
    sr_copies = folder / "storescp"
    with storescp(sr_copies, folder / "storescp.log", extra=["+uf"]) as sink:
        config = write_config(
            folder,
            delivery=f"{sink.ae_title}@{HOST}:{sink.port}",
            queue="lease_seconds = 2.0\nretries = 3\nretry_delay_seconds = 0.2",
        )
        inner, hashes = build_processor(config)
        markers = folder / "markers"
        markers.mkdir()
        processor = SlowStart(inner, markers, SLOW_START_SECONDS)
        sent = [write_cr(folder / "data", seed) for seed in range(studies)]
        killed: dict[str, int] = {}
        missed: list[str] = []
        up_checks: list[bool] = []
        started_at = time.monotonic()
        with build_service(config, processor, hashes) as service:
            storescu(service.dicom_port, [path for _, path in sent], folder / "storescu.log")
            deadline = time.monotonic() + WAIT_SECONDS
            while not settled(service, studies):
                if time.monotonic() > deadline:
                    raise PeerError(f"kill run: jobs not settled within {WAIT_SECONDS:g} s")
                for marker in sorted(markers.iterdir()):
                    job_id, pid_text, _ = marker.name.split(".")
                    if job_id in killed or job_id in missed:
                        continue
                    pid = int(pid_text)
                    assert service.pool is not None
                    if pid not in service.pool.pids or not _pid_alive(pid):
                        missed.append(job_id)
                        continue
                    time.sleep(0.2)  # well inside the processor's 1 s start, before any output exists
                    os.kill(pid, signal.SIGKILL)
                    killed[job_id] = pid
                time.sleep(0.05)
            seconds = time.monotonic() - started_at
            jobs = records(service)
            up_checks.append(service_up(service))
            stored = sum(1 for _ in config.storage.instances.rglob("*.dcm"))
        per_series, leftovers = results_folders(config)
        received = Counter(
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sr_copies.iterdir() if p.is_file()
        )
    produced = [uid for r in jobs if r.output for uid in r.output.output_uids]
    jobs_per_study = Counter(r.spec.study_instance_uid for r in jobs)
    return {
        "studies": studies,
        "processor": "StudyProcessor (cxr-pneumonia, SR delivered to storescp) behind SlowStart "
        f"({SLOW_START_SECONDS:g} s)",
        "kills": len(killed),
        "kills_missed": len(missed),
        "jobs": len(jobs),
        "jobs_done": sum(r.state is JobState.DONE for r in jobs),
        "jobs_failed": sum(r.state is JobState.FAILED for r in jobs),
        "attempts": dict(Counter(r.attempts for r in jobs)),
        "instances_sent": studies,
        "instances_stored": stored,
        "lost": studies - stored,
        "jobs_per_study_max": max(jobs_per_study.values(), default=0),
        "results_folders": sum(per_series.values()),
        "results_folders_per_series_max": max(per_series.values(), default=0),
        "partial_leftovers": leftovers,
        "outputs_produced": len(produced),
        "sr_received": sum(received.values()),
        "sr_distinct": len(received),
        "sr_missing": len(set(produced) - set(received)),
        "duplicates": (max(jobs_per_study.values(), default=1) - 1)
        + (max(per_series.values(), default=1) - 1)
        + sum(n - 1 for n in received.values()),
        "service_up": all(up_checks),
        "seconds": seconds,
    }


# --- b) fuzzed files ------------------------------------------------------------------------------------------------


def send_raw(ae: AE, port: int, files: list[Path]) -> list[int | None]:
    """C-STORE each file's bytes as they are, on one association (a new one if the peer aborts); statuses."""
    statuses: list[int | None] = []
    pending = list(files)
    while pending:
        assoc = ae.associate(HOST, port, ae_title="VESALIUS", evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)])
        if not assoc.is_established:
            raise PeerError("fuzz run: our listener refused the association")
        try:
            while pending:
                path = pending.pop(0)
                try:
                    status = assoc.send_c_store(path)
                except Exception:  # the sender could not even read it: record as not sent
                    statuses.append(None)
                    continue
                statuses.append(int(status.Status) if "Status" in status else None)
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
    return statuses


def run_fuzz(work: Path, count: int, seed: int) -> dict[str, Any]:
    folder = work / "fuzz"
    rng = random.Random(seed)
    study, series = generate_uid(), generate_uid()
    broken: list[tuple[str, Path]] = []
    (folder / "broken").mkdir(parents=True)
    for index in range(count):
        kind = FUZZ_KINDS[index % len(FUZZ_KINDS)]
        base = write_ct(folder / "base" / f"{index:03d}.dcm", 10_000 + index, generate_uid(), generate_uid())
        broken.append((kind, fuzz(base, folder / "broken" / f"{index:03d}-{kind}.dcm", kind, rng)))
    valid = [write_ct(folder / "valid" / f"{i:03d}.dcm", i, study, series) for i in range((count + 3) // 4)]
    sequence: list[tuple[str, Path]] = []
    for index, item in enumerate(broken):
        sequence.append(item)
        if index % 4 == 3 and index // 4 < len(valid):
            sequence.append(("valid", valid[index // 4]))
    oracle = {path: (kind == "valid") or well_formed(path) for kind, path in sequence}
    config = write_config(folder, delivery=None, queue="", route_cr=False)
    inner, hashes = build_processor(config)
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    outcomes: list[dict[str, Any]] = []
    echoes: list[bool] = []
    started_at = time.monotonic()
    with build_service(config, inner, hashes) as service:
        port = service.dicom_port
        for start in range(0, len(sequence), 25):
            batch = sequence[start : start + 25]
            statuses = send_raw(ae, port, [path for _, path in batch])
            for (kind, path), status in zip(batch, statuses, strict=False):
                outcomes.append({"kind": kind, "file": path.name, "status": status, "well_formed": oracle[path]})
            echoes.append(echo(DicomPeer("VESALIUS", HOST, port), calling_ae="BENCH"))
        up = service_up(service)
        store = config.storage.instances
        stored = {p.stem: p for p in store.rglob("*.dcm")}
        temporaries = [p for p in store.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix != ".dcm")]
    seconds = time.monotonic() - started_at
    # half-written: a stored file whose data set is not byte for byte the one sent
    half_written = 0
    by_name = {path.name: path for _, path in sequence}
    for outcome in outcomes:
        path = by_name[outcome["file"]]
        meta = pydicom.filereader.read_file_meta_info(path)
        uid = str(meta.MediaStorageSOPInstanceUID)
        outcome["stored"] = uid in stored
        if uid in stored:
            sent = path.read_bytes()
            if not stored[uid].read_bytes().endswith(sent[dataset_offset(sent) :]):
                half_written += 1
    summary: dict[str, dict[str, int]] = {}
    for kind in (*FUZZ_KINDS, "valid"):
        rows = [o for o in outcomes if o["kind"] == kind]
        summary[kind] = {
            "sent": len(rows),
            "well_formed": sum(o["well_formed"] for o in rows),
            "accepted": sum(o["status"] == 0 for o in rows),
            "refused": sum(o["status"] is not None and o["status"] != 0 for o in rows),
            "no_answer": sum(o["status"] is None for o in rows),
            "stored": sum(o["stored"] for o in rows),
            "malformed_accepted": sum((not o["well_formed"]) and o["status"] == 0 for o in rows),
            "well_formed_refused": sum(o["well_formed"] and o["status"] != 0 for o in rows),
        }
    valid_rows = summary["valid"]
    refused_statuses = Counter(f"0x{o['status']:04X}" for o in outcomes if o["status"] not in (None, 0))
    return {
        "files": count,
        "valid_sent": valid_rows["sent"],
        "by_kind": summary,
        "refusal_statuses": dict(refused_statuses),
        "lost": valid_rows["sent"] - valid_rows["stored"],
        "malformed_accepted": sum(s["malformed_accepted"] for s in summary.values()),
        "refused_without_file": all(not o["stored"] for o in outcomes if o["status"] not in (None, 0)),
        "half_written": half_written,
        "temporaries_left": len(temporaries),
        "duplicates": 0,
        "echo_after_every_batch": all(echoes),
        "batches": len(echoes),
        "service_up": up and all(echoes),
        "seconds": seconds,
        "outcomes": outcomes,
    }


# --- c) Orthanc stopped during delivery -----------------------------------------------------------------------------


@contextmanager
def orthanc_at(folder: Path, dicom_port: int, http_port: int) -> Iterator[Peer]:
    """Orthanc on fixed ports with its storage and index in ``folder`` (kept between starts); private netns only."""
    starts = len(list(folder.glob("orthanc-*.log")))
    log = folder / f"orthanc-{starts}.log"
    with orthanc(folder, dicom_threads=None, ports=(dicom_port, http_port), log=log) as peer:
        yield peer


def sr_in_orthanc(url: str) -> int:
    return int(http_json(f"{url}/statistics")["CountInstances"])


def run_pacs_outage(work: Path, studies: int, down_seconds: float) -> dict[str, Any]:
    folder = work / "outage"
    dicom_port, http_port = free_port(), free_port()
    config = write_config(
        folder,
        delivery=f"ORTHANC@{HOST}:{dicom_port}",
        queue="lease_seconds = 30.0\nretries = 6\nretry_delay_seconds = 1.0",
    )
    inner, hashes = build_processor(config)
    markers = folder / "markers"
    markers.mkdir()
    processor = SlowStart(inner, markers, OUTAGE_START_SECONDS)  # spreads the deliveries over a few seconds
    sent = [write_cr(folder / "data", 100 + seed) for seed in range(studies)]
    up_checks: list[bool] = []
    started_at = time.monotonic()
    with build_service(config, processor, hashes) as service:
        with orthanc_at(folder / "orthanc", dicom_port, http_port) as pacs:
            storescu(service.dicom_port, [path for _, path in sent], folder / "storescu.log")
            wait_until(lambda: sr_in_orthanc(str(pacs.url)) >= 1, WAIT_SECONDS, "the first SR in Orthanc")
            before_stop = sr_in_orthanc(str(pacs.url))
        stopped_at = time.monotonic()
        up_checks.append(service_up(service))
        time.sleep(max(0.0, down_seconds - (time.monotonic() - stopped_at)))
        during = records(service)
        failed_while_down = sum(1 for r in during if r.last_error)
        down_for = time.monotonic() - stopped_at
        with orthanc_at(folder / "orthanc", dicom_port, http_port) as pacs:
            wait_until(lambda: settled(service, studies), WAIT_SECONDS, "every job after Orthanc came back")
            seconds = time.monotonic() - started_at
            jobs = records(service)
            up_checks.append(service_up(service))
            url = str(pacs.url)
            per_study: dict[str, list[str]] = {}
            for r in jobs:
                uid = str(r.spec.study_instance_uid)
                found = http_json(f"{url}/tools/lookup", "POST", uid)
                instances = http_json(f"{url}/studies/{found[0]['ID']}/instances") if found else []
                per_study[uid] = [i["MainDicomTags"]["SOPInstanceUID"] for i in instances]
            total = sr_in_orthanc(url)
        stored = sum(1 for _ in config.storage.instances.rglob("*.dcm"))
    expected = {str(r.spec.study_instance_uid): set(r.output.output_uids) if r.output else set() for r in jobs}
    exactly_once = all(Counter(per_study[uid]) == Counter(expected[uid]) for uid in expected)
    duplicates = sum(max(len(per_study[uid]) - len(expected[uid]), 0) for uid in expected)
    return {
        "studies": studies,
        "down_seconds": down_for,
        "sr_before_stop": before_stop,
        "jobs": len(jobs),
        "jobs_done": sum(r.state is JobState.DONE for r in jobs),
        "jobs_failed": sum(r.state is JobState.FAILED for r in jobs),
        "jobs_with_failed_attempt_while_down": failed_while_down,
        "attempts": dict(Counter(r.attempts for r in jobs)),
        "instances_sent": studies,
        "instances_stored": stored,
        "lost": studies - stored,
        "orthanc_instances": total,
        "results_expected": sum(len(v) for v in expected.values()),
        "every_result_exactly_once": exactly_once,
        "missing_results": sum(len(expected[uid] - set(per_study[uid])) for uid in expected),
        "duplicates": duplicates,
        "service_up": all(up_checks),
        "seconds": seconds,
    }


# --- report ---------------------------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    kills, fuzz_run, outage = result["kills"], result["fuzz"], result["outage"]
    title = "Gateway: faults (workers killed, fuzzed files, PACS stopped during delivery)"
    lines = [
        *section_head(
            NAME, title, result, " One worker process, sqlite queue; the module docstring describes each run."
        ),
        "",
        "| Fault | Instances lost | Duplicate results | Service up | Detail | Seconds |",
        "|---|---|---|---|---|---|",
        f"| kill -9 a worker mid-job x{kills['kills']} | {kills['lost']} | {kills['duplicates']} | "
        f"{'yes' if kills['service_up'] else 'NO'} | {kills['jobs_done']}/{kills['jobs']} jobs done "
        f"({kills['jobs_failed']} failed), attempts {kills['attempts']}; {kills['results_folders']} results folders; "
        f"{kills['sr_received']} SR received by storescp ({kills['sr_distinct']} distinct, {kills['sr_missing']} "
        f"missing); {kills['partial_leftovers']} partial folders left | {kills['seconds']:.0f} |",
        f"| {fuzz_run['files']} truncated/fuzzed files + {fuzz_run['valid_sent']} valid | {fuzz_run['lost']} | 0 | "
        f"{'yes' if fuzz_run['service_up'] else 'NO'} | C-ECHO after each of {fuzz_run['batches']} batches: "
        f"{'all answered' if fuzz_run['echo_after_every_batch'] else 'NOT all answered'}; malformed accepted "
        f"{fuzz_run['malformed_accepted']}; half-written {fuzz_run['half_written']}; temporary files left "
        f"{fuzz_run['temporaries_left']} | {fuzz_run['seconds']:.0f} |",
        f"| Orthanc stopped during delivery ({outage['down_seconds']:.0f} s down) | {outage['lost']} | "
        f"{outage['duplicates']} | {'yes' if outage['service_up'] else 'NO'} | {outage['jobs_done']}/{outage['jobs']} "
        f"jobs done ({outage['jobs_failed']} failed), attempts {outage['attempts']} "
        f"({outage['jobs_with_failed_attempt_while_down']} jobs had failed an attempt while it was down); "
        f"{outage['orthanc_instances']} instances in Orthanc for {outage['results_expected']} results; "
        f"each exactly once: {'yes' if outage['every_result_exactly_once'] else 'NO'} | {outage['seconds']:.0f} |",
        "",
        "Fuzzed files by kind (the oracle: pydicom reads and decodes every element, pixel length as the header says):",
        "",
        "| Kind | Sent | Well-formed | Accepted | Refused | No answer | Malformed but accepted "
        "| Well-formed but refused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in fuzz_run["by_kind"].items():
        lines.append(
            f"| {kind} | {row['sent']} | {row['well_formed']} | {row['accepted']} | {row['refused']} | "
            f"{row['no_answer']} | {row['malformed_accepted']} | {row['well_formed_refused']} |"
        )
    lines += [
        "",
        f"Refusal statuses: {fuzz_run['refusal_statuses']}.",
        "",
        "Goals:",
        "",
    ]
    lost = kills["lost"] + fuzz_run["lost"] + outage["lost"] + kills["sr_missing"] + outage["missing_results"]
    dup = kills["duplicates"] + outage["duplicates"]
    up = kills["service_up"] and fuzz_run["service_up"] and outage["service_up"]
    done = kills["jobs_done"] == kills["jobs"] == kills["studies"] and outage["jobs_done"] == outage["studies"]
    lines += [
        f"- **{verdict(lost == 0)}** instances (and results) lost: {lost} (goal 0)",
        f"- **{verdict(dup == 0)}** duplicate results: {dup} (goal 0)",
        f"- **{verdict(up)}** service up throughout (goal: always)",
        f"- **{verdict(done)}** every job done after the faults",
        f"- **{verdict(fuzz_run['malformed_accepted'] == 0)}** every malformed file refused with a failure status: "
        f"{fuzz_run['malformed_accepted']} accepted",
        f"- **{verdict(fuzz_run['half_written'] == 0 and fuzz_run['temporaries_left'] == 0)}** nothing half-written "
        "on disk",
        f"<!-- {NAME}:end -->",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kill-studies", type=int, default=20, help="studies, each worker killed once (default 20)")
    parser.add_argument("--fuzz-files", type=int, default=200, help="truncated/fuzzed files (default 200)")
    parser.add_argument("--pacs-studies", type=int, default=10, help="studies delivered across the outage")
    parser.add_argument("--down-seconds", type=float, default=8.0, help="how long Orthanc stays stopped")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--workdir", type=Path, default=None, help="where data and servers write (default: TMPDIR)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    if not require_private_network():
        return 2
    load_before = os.getloadavg()[0]
    command = command_line(NAME)
    with tempfile.TemporaryDirectory(prefix="vesalius-bench-faults-", dir=args.workdir) as folder:
        work = Path(folder)
        kills = run_kills(work, args.kill_studies)
        print(f"kills: {kills}", flush=True)
        fuzz_run = run_fuzz(work, args.fuzz_files, args.seed)
        print(f"fuzz: { ({k: v for k, v in fuzz_run.items() if k != 'outcomes'}) }", flush=True)
        outage = run_pacs_outage(work, args.pacs_studies, args.down_seconds)
        print(f"outage: {outage}", flush=True)
    result: dict[str, Any] = {
        **run_header(command, load_before),
        "versions": peer_versions(),
        "kills": kills,
        "fuzz": fuzz_run,
        "outage": outage,
    }
    publish(NAME, result, render(result))
    failed = (
        kills["lost"] or kills["duplicates"] or fuzz_run["lost"] or outage["lost"] or outage["duplicates"]
    ) or not (kills["service_up"] and fuzz_run["service_up"] and outage["service_up"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
