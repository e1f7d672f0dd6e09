"""Gateway latency: last instance of a study received -> its DICOM SEG stored in Orthanc, model compute excluded.

Set-up, all on loopback inside a private network namespace (Orthanc binds every interface):

* Orthanc 1.10 (the PACS; ``benchmarks/_dicom_peers.orthanc``, fsync of every file), with our listener declared
  as the modality ``vesalius`` (REST ``PUT /modalities/vesalius``);
* our ``GatewayService`` with the real ``StudyProcessor`` (``vesalius.cli.gateway.build_processor``), one worker
  process, the shipped ``models/hippocampus/package`` routed for ``MR``, results delivered back to Orthanc by
  C-STORE; the configuration is a ``vesalius.toml`` written to a temporary folder. The service is the one
  ``vesalius serve`` builds, subclassed only to note the time each instance is stored (after its fsync, before
  the C-STORE success: the ``on_stored`` hook).

Each trial makes a new MR study (one series, 35 slices of 50 x 36 pixels, 1 mm voxels: the size of the
hippocampus crops the model was trained on; fresh UIDs each time), uploads it to Orthanc by REST, and asks Orthanc
to send it to our listener (``POST /modalities/vesalius/store``). Then this process polls Orthanc every 20 ms
(``POST /tools/find``: a SEG series in the study) until the SEG is there. Times:

* ``t_stored``: the last instance of the study stored by our listener;
* ``t_seg``: the first poll that finds the SEG in Orthanc (so up to 20 ms late);
* ``compute``: the model's seconds as the processor records them in the job summary (``compute_seconds``:
  reading the series, inference; the engine is loaded by an untimed warm-up study first).

Latency = (t_seg - t_stored) - compute. Two study-completion modes, each with a fresh service:
``find-counts`` (``use_find_counts``: the study is complete as soon as the count Orthanc reports by C-FIND is
stored; ``quiet_seconds`` 30, never reached) and ``quiet`` (``quiet_seconds`` 1, for comparison). The breakdown
splits the latency at the job's queue times: completion detection (stored -> job queued), worker pick-up (queued
-> started), and the rest of the job less compute (finding the series, writing SEG, SR and FHIR, C-STORE to
Orthanc). ``--studies`` trials per mode (default 5): median and max.

Goal (issue 6): under 2 s (median and max), with use_find_counts.

Peer: nothing does the same job, so the baseline is Orthanc's own cost of taking the result: a C-STORE of the
same SEG file (new SOP Instance UID each time) to the same Orthanc by DCMTK ``storescu`` (process start included)
and by our own SCU (``vesalius.gateway.scu.send_instances``, as delivery uses it); and how long Orthanc takes to
send the study to us. That shows how much of the latency is the PACS itself.

Run from the repository root:
``unshare --net -- bash -c 'ip link set lo up && .venv/bin/python benchmarks/gateway_latency.py'``.
It prints a table, writes ``benchmarks/results/gateway_latency.json`` and updates its section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

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
    tool,
)
from vesalius.cli.gateway import api_factory, build_processor
from vesalius.gateway.jobs import JobRecord, JobState
from vesalius.gateway.scu import DicomPeer, send_instances
from vesalius.gateway.service import GatewayService
from vesalius.gateway.storage import StoredInstance

NAME = "gateway_latency"
PACKAGE = REPO / "models" / "hippocampus" / "package"
SHAPE = (36, 50, 35)  # columns, rows, slices
POLL_SECONDS = 0.02
SEG_TIMEOUT = 180.0
GOAL_SECONDS = 2.0
MODES = {"find-counts": {"quiet_seconds": 30.0, "use_find_counts": True}, "quiet": {"quiet_seconds": 1.0}}


def write_mr_study(folder: Path, seed: int) -> tuple[str, list[Path]]:
    """A new MR study of one series: a bright ellipsoid in noise, hippocampus-crop sized, 1 mm voxels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    columns, rows, slices = SHAPE
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    j, i = np.mgrid[0:rows, 0:columns]
    paths = []
    for k in range(slices):
        inside = ((i - 18) / 9) ** 2 + ((j - 25) / 16) ** 2 + ((k - 17) / 12) ** 2 < 1
        pixels = np.where(inside, 900, 300) + rng.normal(0, 40, (rows, columns))
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Latency", "BENCH-LAT", "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.SeriesDescription, ds.Manufacturer = "T1 hippocampus crop", "Vesalius benchmark"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


class TimedService(GatewayService):
    """The gateway service, noting when each study's latest instance was stored (wall clock, after fsync)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stored_at: dict[str, float] = {}

    def _on_stored(self, stored: StoredInstance) -> None:
        self.stored_at[stored.study_uid] = time.time()
        super()._on_stored(stored)


def write_config(folder: Path, port: int, pacs: Peer, mode: dict[str, Any]) -> Any:
    """The service's ``vesalius.toml``: MR routed to the hippocampus model, results and C-FIND to Orthanc."""
    peer = f"{pacs.ae_title}@{HOST}:{pacs.port}"
    study = f"quiet_seconds = {mode['quiet_seconds']}"
    if mode.get("use_find_counts"):
        study += f'\nuse_find_counts = true\nfind_peer = "{peer}"'
    return gateway_config(
        folder,
        port=port,
        allowed_calling_aes=[pacs.ae_title],
        study=study,
        queue="retry_delay_seconds = 0.5",
        models={"hippocampus": PACKAGE},
        routes=[("MR", "MR", "hippocampus")],
        delivery=peer,
    )


def seg_in_orthanc(url: str, study_uid: str) -> bool:
    query = {"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": "SEG"}}
    return bool(http_json(f"{url}/tools/find", "POST", json.dumps(query), timeout=5.0))


def job_for(service: GatewayService, study_uid: str) -> JobRecord | None:
    for submitted in list(service.submitted):
        if submitted.study_uid == study_uid and submitted.record is not None and service.queue is not None:
            return service.queue.get(submitted.record.job_id)
    return None


def trial(service: TimedService, pacs: Peer, data: Path, seed: int) -> dict[str, Any]:
    """One study: upload to Orthanc, send to us, wait for the SEG in Orthanc; the times."""
    url = str(pacs.url)
    study_uid, files = write_mr_study(data / f"study-{seed}", seed)
    for path in files:
        http_json(f"{url}/instances", "POST", path.read_bytes(), timeout=30.0)
    (found,) = http_json(f"{url}/tools/lookup", "POST", study_uid, timeout=30.0)
    send_started = time.time()
    http_json(f"{url}/modalities/vesalius/store", "POST", found["ID"], timeout=120.0)
    send_returned = time.time()
    deadline = time.monotonic() + SEG_TIMEOUT
    while not seg_in_orthanc(url, study_uid):
        if time.monotonic() > deadline:
            record = job_for(service, study_uid)
            state = "not queued" if record is None else f"{record.state.value} ({record.last_error})"
            raise PeerError(f"study {study_uid}: no SEG in Orthanc after {SEG_TIMEOUT:g} s; job {state}")
        time.sleep(POLL_SECONDS)
    seg_at = time.time()
    record = None
    while time.monotonic() < deadline:
        record = job_for(service, study_uid)
        if record is not None and record.state in (JobState.DONE, JobState.FAILED):
            break
        time.sleep(POLL_SECONDS)
    if record is None or record.state is not JobState.DONE or record.output is None:
        raise PeerError(f"study {study_uid}: job did not finish ({None if record is None else record.state})")
    stored_at = service.stored_at[study_uid]
    compute = float(record.output.summary["compute_seconds"])
    queued = record.spec.created.timestamp()
    started = record.started.timestamp() if record.started else queued
    seg_file = (
        next(record.output_dir / f.name for f in record.output.files if f.kind == "seg") if record.output_dir else None
    )
    total = seg_at - stored_at
    return {
        "study_instance_uid": study_uid,
        "instances": len(files),
        "latency_s": total - compute,
        "stored_to_seg_s": total,
        "compute_s": compute,
        "completion_s": queued - stored_at,
        "pickup_s": started - queued,
        "job_rest_s": seg_at - started - compute,
        "orthanc_send_s": send_returned - send_started,
        "first_to_last_stored_s": stored_at - send_started,
        "attempts": record.attempts,
        "seg_file": str(seg_file) if seg_file else None,
    }


def run_mode(name: str, mode: dict[str, Any], pacs: Peer, work: Path, studies: int) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True)
    port = free_port()
    modality = json.dumps({"AET": "VESALIUS", "Host": HOST, "Port": port})
    http_json(f"{pacs.url}/modalities/vesalius", "PUT", modality, timeout=30.0)
    config = write_config(folder, port, pacs, mode)
    processor, hashes = build_processor(config)
    trials = []
    with TimedService(config, processor, hashes, api_factory=api_factory(config, hashes)) as service:
        warm = trial(service, pacs, folder / "data", seed=1000)
        print(f"{name:11s} warm-up: stored->SEG {warm['stored_to_seg_s']:.2f} s (compute {warm['compute_s']:.2f})")
        for index in range(studies):
            result = trial(service, pacs, folder / "data", seed=index)
            trials.append(result)
            print(
                f"{name:11s} #{index}: latency {result['latency_s']:.3f} s (stored->SEG {result['stored_to_seg_s']:.3f}"
                f", compute {result['compute_s']:.3f}, completion {result['completion_s']:.3f}, pick-up "
                f"{result['pickup_s']:.3f}, rest {result['job_rest_s']:.3f})",
                flush=True,
            )
    latencies = [t["latency_s"] for t in trials]
    summary = {
        key: statistics.median(t[key] for t in trials)
        for key in ("stored_to_seg_s", "compute_s", "completion_s", "pickup_s", "job_rest_s", "orthanc_send_s")
    }
    return {
        "settings": mode,
        "median_s": statistics.median(latencies),
        "max_s": max(latencies),
        "medians": summary,
        "warmup": warm,
        "trials": trials,
    }


def copy_with_new_uid(source: Path, target: Path) -> Path:
    ds = pydicom.dcmread(source)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(target, enforce_file_format=True)
    return target


def baseline(pacs: Peer, seg_file: Path, work: Path, repeats: int) -> dict[str, Any]:
    """Orthanc taking the same SEG: storescu (process included) and our SCU, new SOP Instance UID each time."""
    work.mkdir(parents=True, exist_ok=True)
    storescu_s, ours_s = [], []
    peer = DicomPeer(pacs.ae_title, HOST, pacs.port)
    for index in range(repeats):
        path = copy_with_new_uid(seg_file, work / f"dcmtk-{index}.dcm")
        args = [tool("storescu"), "-R", "-aet", "VESALIUS", "-aec", pacs.ae_title, HOST, str(pacs.port), str(path)]
        started = time.perf_counter()
        done = subprocess.run(args, capture_output=True, timeout=60, env=peer_env(), check=False)
        storescu_s.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise PeerError(f"storescu of the SEG failed: {done.stdout[-400:]!r} {done.stderr[-400:]!r}")
        path = copy_with_new_uid(seg_file, work / f"ours-{index}.dcm")
        started = time.perf_counter()
        report = send_instances([path], peer, calling_ae="VESALIUS", timeout=30)
        ours_s.append(time.perf_counter() - started)
        if not report.ok:
            raise PeerError("our SCU could not store the SEG in Orthanc")
    return {
        "seg_bytes": seg_file.stat().st_size,
        "repeats": repeats,
        "storescu_median_s": statistics.median(storescu_s),
        "our_scu_median_s": statistics.median(ours_s),
        "storescu_s": storescu_s,
        "our_scu_s": ours_s,
    }


def render(result: dict[str, Any]) -> str:
    base = result["baseline"]
    title = "Gateway: last instance received -> SEG stored in Orthanc (model compute excluded)"
    lines = [
        *section_head(NAME, title, result),
        "",
        f"Each trial: a new MR study (1 series, {SHAPE[2]} slices of {SHAPE[1]} x {SHAPE[0]}, 1 mm) uploaded to "
        "Orthanc, which sends it to our listener (`/modalities/vesalius/store`); our `GatewayService` (real "
        "`StudyProcessor`, `models/hippocampus/package`, 1 worker process) writes SEG, SR and FHIR and stores SEG "
        "and SR back in Orthanc. Latency = (SEG found in Orthanc, 20 ms polling) - (last instance fsync-ed by our "
        f"listener) - model compute (`compute_seconds` in the job summary). {result['studies']} studies per mode "
        "after one untimed warm-up; median and max. Breakdown (medians): completion = stored -> job queued; "
        "pick-up = queued -> worker started; rest = the job less compute (headers, SEG/SR/FHIR writing, C-STORE).",
        "",
        "| Study completion | Median latency (s) | Max (s) | Stored -> SEG (s) | Compute (s) | Completion (s) "
        "| Pick-up (s) | Rest of job (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, mode in result["modes"].items():
        m = mode["medians"]
        lines.append(
            f"| {name} | {mode['median_s']:.3f} | {mode['max_s']:.3f} | {m['stored_to_seg_s']:.3f} | "
            f"{m['compute_s']:.3f} | {m['completion_s']:.3f} | {m['pickup_s']:.3f} | {m['job_rest_s']:.3f} |"
        )
    send = statistics.median(t["orthanc_send_s"] for mode in result["modes"].values() for t in mode["trials"])
    lines += [
        "",
        f"Baseline (the PACS's own part; no like-for-like peer exists): C-STORE of the same SEG "
        f"({base['seg_bytes'] / 1e3:.0f} kB, new SOP Instance UID each time) to this Orthanc, median of "
        f"{base['repeats']}: DCMTK storescu {base['storescu_median_s']:.3f} s (process start included), our SCU "
        f"{base['our_scu_median_s']:.3f} s. Orthanc sending the {SHAPE[2]}-instance study to our listener: "
        f"{send:.3f} s (median).",
        "",
        "The service polls on fixed intervals (`vesalius serve` defaults): the study watcher every "
        "min(0.5 s, quiet_seconds / 4) and each worker every 0.5 s when idle, so completion and pick-up each "
        "wait up to 0.5 s.",
        "",
        "Goals:",
        "",
    ]
    mode = result["modes"]["find-counts"]
    lines.append(
        f"- **{verdict(mode['max_s'] < GOAL_SECONDS)}** with use_find_counts: median {mode['median_s']:.3f} s, max "
        f"{mode['max_s']:.3f} s (goal < {GOAL_SECONDS:g} s)"
    )
    quiet = result["modes"]["quiet"]
    lines.append(
        f"- for comparison, quiet_seconds = 1: median {quiet['median_s']:.3f} s, max {quiet['max_s']:.3f} s "
        "(the quiet period itself is part of it)"
    )
    lines.append(f"<!-- {NAME}:end -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=5, help="timed studies per completion mode (default 5)")
    parser.add_argument("--baseline-repeats", type=int, default=5, help="SEG stores per baseline client")
    parser.add_argument("--workdir", type=Path, default=None, help="where data and servers write (default: TMPDIR)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    if not require_private_network():
        return 2
    load_before = os.getloadavg()[0]
    command = command_line(NAME)
    with tempfile.TemporaryDirectory(prefix="vesalius-bench-latency-", dir=args.workdir) as folder:
        work = Path(folder)
        with orthanc(work / "orthanc") as pacs:
            modes = {name: run_mode(name, mode, pacs, work, args.studies) for name, mode in MODES.items()}
            seg_file = next(Path(t["seg_file"]) for m in modes.values() for t in m["trials"] if t["seg_file"])
            base = baseline(pacs, seg_file, work / "baseline", args.baseline_repeats)
    result: dict[str, Any] = {
        **run_header(command, load_before),
        "versions": peer_versions(),
        "studies": args.studies,
        "goal_s": GOAL_SECONDS,
        "modes": modes,
        "baseline": base,
    }
    publish(NAME, result, render(result))
    return 0 if modes["find-counts"]["max_s"] < GOAL_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
