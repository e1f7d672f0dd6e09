"""Gateway receive throughput: our storage SCP against DCMTK storescp and Orthanc, side by side in one run.

Receivers, each started fresh for every trial with an empty folder, on loopback:

* ``vesalius``: ``vesalius.gateway.scp.StorageSCP`` with ``InstanceStore`` (in this process): every instance is
  written as received, fsync-ed, renamed into place and its folder fsync-ed *before* C-STORE success is returned;
* ``storescp``: DCMTK ``storescp -od DIR +B --accept-all --fork`` (bit-preserving: the bytes as received, like
  ours; ``--fork``: one child per association, otherwise it serves one association at a time). DCMTK 3.6.7 has
  no fsync option (``storescp --help``), so it answers success once the file is written to the page cache;
* ``orthanc``: Orthanc 1.10 (Debian package) with a throw-away storage and index, ``SyncStorageArea`` true (its
  default: fsync of each file) and ``DicomThreadsCount`` = max(4, associations). Orthanc binds every interface,
  so it runs only when this process is in a private network namespace with only loopback up; otherwise its rows
  read "skipped".

The sender is the same for every receiver: DCMTK ``storescu`` processes (``TCP_NODELAY=1``), one per
association, each sending its round-robin share of a generated data set (``--instances`` CT images, 512 x 512
int16, explicit VR little endian, about 0.5 MB each, one series). Each trial first sends a separate warm-up set
(``--warmup`` instances, same association count), untimed; then the timed send: wall time from the start of the
first storescu to the exit of the last. Afterwards the instances the receiver holds are counted (files on disk;
Orthanc's ``/statistics``) and any shortfall is reported as lost. Every storescu must exit 0. The median of
``--runs`` trials per receiver and association count is reported; receivers are interleaved within a run so that
background load falls on all of them alike. MB is 10^6 bytes of DICOM files sent.

Goal (issue 6): with fsync, at least storescp's rate (instances/s) over 1 and over 8 associations; 0 lost.

Run from the repository root, in a private network namespace so that Orthanc can take part:
``unshare --net -- bash -c 'ip link set lo up && .venv/bin/python benchmarks/gateway_receive.py'``.
It prints a table, writes ``benchmarks/results/gateway_receive.json`` (every trial) and updates its own section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from _common import publish, run_header, section_head, verdict
from _dicom_peers import (
    HOST,
    Peer,
    PeerError,
    command_line,
    http_json,
    network_is_private,
    orthanc,
    peer_env,
    peer_versions,
    stop,
    storescp,
    storescp_has_fsync,
    storescu_args,
    tool,
)
from vesalius.gateway.scp import ScpSettings, StorageSCP
from vesalius.gateway.storage import InstanceStore

NAME = "gateway_receive"
OURS = "vesalius"
PEERS = (OURS, "storescp", "orthanc")
FSYNC = {OURS: "yes (file and folder)", "storescp": "no (3.6.7 has no option)", "orthanc": "yes (SyncStorageArea)"}
SEND_TIMEOUT = 300.0
SETTLE_SECONDS = 10.0


def write_instances(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` CT images of one new study and series, 512 x 512 int16, explicit VR little endian."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    base = (np.hypot(*np.mgrid[-256:256, -256:256]) < 200).astype(np.int16) * 1040 - 1000
    paths = []
    for index in range(count):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{index:05d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^Receive", "BENCH-RECEIVE", "CT"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
        ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
        ds.ImagePositionPatient = [-256.0, -256.0, float(index)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = 512, 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        pixels = base + rng.integers(-20, 20, size=base.shape, dtype=np.int16)
        ds.PixelData = pixels.tobytes()
        path = folder / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@contextmanager
def receiver(name: str, folder: Path, associations: int) -> Iterator[tuple[Peer, Callable[[], int]]]:
    """Start ``name`` on loopback with an empty storage folder; yield it and a function counting what it holds."""
    storage = folder / "storage"
    if name == OURS:
        settings = ScpSettings(ae_title="VESALIUS", host=HOST, port=0, maximum_associations=max(16, associations))
        with StorageSCP(settings, InstanceStore(storage)) as scp:
            yield Peer("VESALIUS", scp.port), lambda: sum(1 for _ in storage.rglob("*.dcm"))
    elif name == "storescp":
        with storescp(storage, folder / "storescp.log") as peer:
            yield peer, lambda: sum(1 for p in storage.iterdir() if p.is_file())
    elif name == "orthanc":
        with orthanc(folder, dicom_threads=max(4, associations)) as peer:
            yield peer, lambda: int(http_json(f"{peer.url}/statistics")["CountInstances"])
    else:
        raise ValueError(name)


def send(peer: Peer, files: list[Path], associations: int, logs: Path) -> tuple[float, list[int], str]:
    """storescu x ``associations`` in parallel, round-robin shares; wall seconds, exit codes, first failure's log."""
    logs.mkdir(parents=True, exist_ok=True)
    shares = [files[i::associations] for i in range(associations)]
    base = storescu_args("BENCH", peer.ae_title)
    processes: list[subprocess.Popen[bytes]] = []
    sinks = []
    try:
        started = time.perf_counter()
        for index, share in enumerate(shares):
            sink = (logs / f"storescu-{index}.log").open("wb")
            sinks.append(sink)
            args = [*base, HOST, str(peer.port), *map(str, share)]
            processes.append(subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=peer_env()))
        deadline = started + SEND_TIMEOUT
        codes = [process.wait(timeout=max(0.1, deadline - time.perf_counter())) for process in processes]
        seconds = time.perf_counter() - started
    finally:
        for process in processes:
            stop(process, timeout=5)
        for sink in sinks:
            sink.close()
    failed = next((i for i, code in enumerate(codes) if code != 0), None)
    detail = "" if failed is None else (logs / f"storescu-{failed}.log").read_text(errors="replace")[-600:]
    return seconds, codes, detail


def settle(count: Callable[[], int], expected: int) -> int:
    """What the receiver holds, waiting up to SETTLE_SECONDS for it to reach ``expected``."""
    deadline = time.monotonic() + SETTLE_SECONDS
    held = count()
    while held < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        held = count()
    return held


def trial(name: str, associations: int, data: dict[str, list[Path]], work: Path) -> dict[str, Any]:
    """One fresh receiver: an untimed warm-up send, then the timed send, then the count."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-{associations}-", dir=work))
    timed, warm = data["timed"], data["warmup"]
    size = sum(path.stat().st_size for path in timed)
    with receiver(name, folder, associations) as (peer, count):
        warm_seconds, warm_codes, warm_detail = send(peer, warm, associations, folder / "warmup")
        seconds, codes, detail = send(peer, timed, associations, folder / "timed")
        held = settle(count, len(warm) + len(timed))
    return {
        "receiver": name,
        "associations": associations,
        "instances": len(timed),
        "bytes": size,
        "seconds": seconds,
        "instances_per_s": len(timed) / seconds,
        "mb_per_s": size / 1e6 / seconds,
        "received": held - len(warm),
        "lost": len(warm) + len(timed) - held,
        "storescu_exit_codes": codes,
        "storescu_failure": detail or warm_detail,
        "warmup": {"instances": len(warm), "seconds": warm_seconds, "exit_codes": warm_codes},
    }


def summarise(trials: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = statistics.median(t["seconds"] for t in trials)
    first = trials[0]
    return {
        "instances": first["instances"],
        "seconds": seconds,
        "instances_per_s": first["instances"] / seconds,
        "mb_per_s": first["bytes"] / 1e6 / seconds,
        "lost": max(t["lost"] for t in trials),
        "storescu_failures": sum(any(c != 0 for c in t["storescu_exit_codes"]) for t in trials),
        "runs": len(trials),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    skipped: dict[str, str] = {}
    if not network_is_private():
        skipped["orthanc"] = "skipped: not in a private network namespace"
    else:
        try:
            tool("Orthanc")
        except PeerError:
            skipped["orthanc"] = "skipped: Orthanc is not installed"
    names = [name for name in PEERS if name not in skipped]
    started = time.perf_counter()
    data = {
        "timed": write_instances(work / "data" / "timed", args.instances, seed=0),
        "warmup": write_instances(work / "data" / "warmup", args.warmup, seed=1),
    }
    generated = time.perf_counter() - started
    trials: list[dict[str, Any]] = []
    for associations in args.associations:
        for repeat in range(args.runs):
            for name in names:
                result = trial(name, associations, data, work)
                result["run"] = repeat
                trials.append(result)
                print(
                    f"{name:9s} x{associations}: {result['instances_per_s']:7.1f} inst/s "
                    f"{result['mb_per_s']:6.1f} MB/s lost {result['lost']}",
                    flush=True,
                )
    summary: dict[str, dict[str, Any]] = {}
    for associations in args.associations:
        rows: dict[str, Any] = {}
        for name in PEERS:
            if name in skipped:
                rows[name] = {"skipped": skipped[name]}
                continue
            rows[name] = summarise([t for t in trials if t["receiver"] == name and t["associations"] == associations])
        ours = rows[OURS]["instances_per_s"]
        for name in names:
            rows[name]["ours_over_this"] = ours / rows[name]["instances_per_s"]
        summary[str(associations)] = rows
    return {"summary": summary, "trials": trials, "skipped": skipped, "generate_seconds": generated}


def render(result: dict[str, Any]) -> str:
    instance = result["data"]
    lines = [
        *section_head(NAME, "Gateway: receive throughput (C-STORE SCP) against storescp and Orthanc", result),
        "",
        f"Data: {instance['instances']} CT instances, 512 x 512 int16, explicit VR little endian "
        f"({instance['mb']:.0f} MB), sent by DCMTK storescu processes (TCP_NODELAY=1), one per association, after an "
        f"untimed warm-up of {instance['warmup']} instances to a fresh receiver. Wall time from the first storescu "
        f"start to the last storescu exit; median of {result['runs']} run(s). Storage on the local disk "
        f"({result['filesystem']}).",
        "",
        "| Receiver | fsync before success | Associations | Seconds | Instances/s | MB/s | Lost | Vesalius / this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for associations, rows in result["summary"].items():
        for name, row in rows.items():
            if "skipped" in row:
                lines.append(f"| {name} | {FSYNC[name]} | {associations} | {row['skipped']} | | | | |")
                continue
            failures = f" ({row['storescu_failures']} failed sends)" if row["storescu_failures"] else ""
            lines.append(
                f"| {name} | {FSYNC[name]} | {associations} | {row['seconds']:.2f} | {row['instances_per_s']:.1f} | "
                f"{row['mb_per_s']:.1f} | {row['lost']}{failures} | {row['ours_over_this']:.2f} |"
            )
    lines += ["", result["storescp_fsync"], "", "Goals:", ""]
    for associations, rows in result["summary"].items():
        ours, peer = rows[OURS], rows["storescp"]
        ok = ours["instances_per_s"] >= peer["instances_per_s"]
        lines.append(
            f"- **{verdict(ok)}** {associations} association(s): Vesalius with fsync "
            f"{ours['instances_per_s']:.1f} instances/s vs storescp {peer['instances_per_s']:.1f} "
            f"(ratio {peer['ours_over_this']:.2f}; goal >= 1)"
        )
    lost = sum(row.get("lost", 0) for rows in result["summary"].values() for row in rows.values())
    lines += [f"- **{verdict(lost == 0)}** instances lost, all receivers: {lost} (goal 0)"]
    lines.append(f"<!-- {NAME}:end -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=400, help="instances in the timed send (default 400)")
    parser.add_argument("--warmup", type=int, default=16, help="instances in the untimed warm-up send")
    parser.add_argument("--associations", type=int, nargs="+", default=[1, 8], help="concurrent associations")
    parser.add_argument("--runs", type=int, default=3, help="timed sends per receiver and association count (median)")
    parser.add_argument("--workdir", type=Path, default=None, help="where data and receivers write (default: TMPDIR)")
    args = parser.parse_args()
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    load_before = os.getloadavg()[0]
    has_fsync = storescp_has_fsync()
    command = command_line(NAME, unshare=network_is_private())
    with tempfile.TemporaryDirectory(prefix="vesalius-bench-receive-", dir=args.workdir) as folder:
        work = Path(folder)
        filesystem = subprocess.run(
            ["df", "--output=source,fstype", str(work)], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()[-2:]
        measured = run(args, work)
    result: dict[str, Any] = {
        **run_header(command, load_before),
        "filesystem": " ".join(filesystem) or "?",
        "versions": peer_versions(dcmtk_first=True),
        "storescp_fsync": (
            "storescp offers an fsync option, but this script does not yet use it."
            if has_fsync
            else "storescp (DCMTK 3.6.7) has no fsync option (checked `storescp --help`): it is measured without "
            "fsync only, so its success may precede the data reaching the disk; Vesalius and Orthanc fsync first."
        ),
        "data": {
            "instances": args.instances,
            "warmup": args.warmup,
            "mb": measured["trials"][0]["bytes"] / 1e6 if measured["trials"] else 0.0,
        },
        "runs": args.runs,
        **measured,
    }
    publish(NAME, result, render(result))
    failed = [t for t in measured["trials"] if t["lost"] or any(c != 0 for c in t["storescu_exit_codes"])]
    for item in failed:
        codes = item["storescu_exit_codes"]
        print(f"{item['receiver']} x{item['associations']}: lost {item['lost']}, storescu exit codes {codes}")
        print(item["storescu_failure"], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
