"""DICOM peers for the gateway benchmarks: DCMTK storescp/storescu and Orthanc, with bounded waits.

Servers listen on 127.0.0.1 (Orthanc 1.10 cannot: it binds every interface, so :func:`orthanc` refuses to start
unless the process is in a private network namespace with only loopback). Every process started here is stopped
(terminate, then kill) when its ``with`` block ends. DCMTK and Orthanc read ``TCP_NODELAY=1`` from the
environment; without it Nagle's algorithm costs ~40 ms per message.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


class PeerError(RuntimeError):
    """A peer is missing, did not start, or did not answer in time."""


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise PeerError(f"{name} is not installed (DCMTK / Orthanc Debian packages)")
    return found


def peer_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def network_is_private() -> bool:
    """True inside a network namespace whose only interface is loopback (``unshare --net``)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def wait_until(check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise PeerError(f"{what}: the process exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise PeerError(f"{what}: not ready within {timeout} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, wait 10 s at most, then kill."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def started(args: Sequence[str], log: Path, ready: Callable[[], bool], what: str) -> Iterator[subprocess.Popen[bytes]]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(list(args), stdout=sink, stderr=subprocess.STDOUT, env=peer_env())
    try:
        try:
            wait_until(ready, 30.0, what, process)
        except PeerError as error:
            raise PeerError(f"{error}; log: {log.read_text(errors='replace')[-1500:]}") from error
        yield process
    finally:
        stop(process)


def storescp_has_fsync() -> bool:
    """Whether this DCMTK's storescp offers an fsync option (3.6.7 does not)."""
    shown = subprocess.run([tool("storescp"), "--help"], capture_output=True, text=True, timeout=10, check=False)
    return "fsync" in (shown.stdout + shown.stderr).lower()


def dcmtk_version() -> str:
    shown = subprocess.run([tool("storescp"), "--version"], capture_output=True, text=True, timeout=10, check=False)
    first = shown.stdout.strip().splitlines()[0] if shown.stdout.strip() else "?"
    return first.strip("$ ").replace("dcmtk: ", "")


@dataclass(frozen=True)
class Peer:
    """A running receiver: its AE title and DICOM port on loopback."""

    ae_title: str
    port: int
    url: str | None = None


@contextmanager
def storescp(out_dir: Path, log: Path, extra: Sequence[str] = ()) -> Iterator[Peer]:
    """storescp writing every instance into ``out_dir`` exactly as received (``-od``, ``+B``, ``--accept-all``).

    ``--fork``: one child per association, so concurrent associations are served concurrently (its default
    single-process mode serves one association at a time).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [tool("storescp"), "-aet", "STORESCP", "-od", str(out_dir), "+B", "--accept-all", "--fork", "-dhl"]
    with started([*args, *extra, str(port)], log, lambda: accepts_tcp(port), "storescp"):
        yield Peer("STORESCP", port)


def http_json(url: str, timeout: float = 10.0) -> Any:
    if not url.startswith(f"http://{HOST}:"):
        raise PeerError(f"refusing a non-loopback URL {url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only, checked above
        return json.loads(response.read())


def orthanc_version() -> str:
    shown = subprocess.run([tool("Orthanc"), "--version"], capture_output=True, text=True, timeout=10, check=False)
    return shown.stdout.strip().splitlines()[0] if shown.stdout.strip() else "?"


@contextmanager
def orthanc(folder: Path, dicom_threads: int = 4) -> Iterator[Peer]:
    """Orthanc with a throw-away storage and index in ``folder``; only in a private network namespace.

    Its defaults otherwise: ``SyncStorageArea`` true (fsync of every stored file), no storage compression.
    """
    executable = tool("Orthanc")
    if not network_is_private():
        raise PeerError("Orthanc binds every interface: run only in a private network namespace")
    dicom_port, http_port = free_port(), free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "vesalius-bench",
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
        "DicomThreadsCount": dicom_threads,
        "SyncStorageArea": True,
        "StorageCompression": False,
        "Plugins": [],
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    url = f"http://{HOST}:{http_port}"

    def ready() -> bool:
        try:
            http_json(url + "/system", timeout=2.0)
        except OSError:
            return False
        return accepts_tcp(dicom_port)

    with started([executable, str(path)], folder / "orthanc.log", ready, "Orthanc"):
        yield Peer("ORTHANC", dicom_port, url)
