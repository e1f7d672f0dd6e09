"""DICOM peers for the gateway benchmarks: DCMTK storescp/storescu and Orthanc, with bounded waits.

Servers listen on 127.0.0.1 (Orthanc 1.10 cannot: it binds every interface, so :func:`orthanc` refuses to start
unless the process is in a private network namespace with only loopback). Every process started here is stopped
(terminate, then kill) when its ``with`` block ends. DCMTK and Orthanc read ``TCP_NODELAY=1`` from the
environment; without it Nagle's algorithm costs ~40 ms per message.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
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


def require_private_network() -> bool:
    """Whether the network is private; if not, say so on stderr (the scripts that need Orthanc then exit 2)."""
    if network_is_private():
        return True
    print("Orthanc binds every interface: run inside `unshare --net` (see the module docstring)", file=sys.stderr)
    return False


def command_line(name: str, unshare: bool = True) -> str:
    """How to rerun ``benchmarks/<name>.py`` with this process's arguments, in a private namespace if ``unshare``."""
    command = shlex.join([".venv/bin/python", f"benchmarks/{name}.py", *sys.argv[1:]])
    return f"unshare --net -- bash -c {shlex.quote('ip link set lo up && ' + command)}" if unshare else command


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``check`` every 50 ms; PeerError after ``timeout`` s or once ``process`` (if any) has exited."""
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise PeerError(f"{what}: the process exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise PeerError(f"{what}: not ready within {timeout:g} s")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate, wait ``timeout`` s at most, then kill (and wait as long again)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


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


def storescu_args(calling_ae: str, called_ae: str) -> list[str]:
    """storescu with bounded waits (connect/ACSE 30 s, DIMSE 60 s); append host, port and files."""
    return [tool("storescu"), "-aet", calling_ae, "-aec", called_ae, "-to", "30", "-ta", "30", "-td", "60"]


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


def http_json(url: str, method: str = "GET", body: bytes | str | None = None, timeout: float = 10.0) -> Any:
    """A request to Orthanc's REST API (loopback only); its JSON answer, None if empty."""
    if not url.startswith(f"http://{HOST}:"):
        raise PeerError(f"refusing a non-loopback URL {url}")
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # loopback only, checked above
        text = response.read()
    return json.loads(text) if text.strip() else None


def orthanc_version() -> str:
    shown = subprocess.run([tool("Orthanc"), "--version"], capture_output=True, text=True, timeout=10, check=False)
    return shown.stdout.strip().splitlines()[0] if shown.stdout.strip() else "?"


def peer_versions(dcmtk_first: bool = False) -> str:
    """Orthanc, DCMTK, pynetdicom and pydicom versions, one line."""
    import pydicom
    import pynetdicom

    peers = [orthanc_version(), dcmtk_version()]
    first, second = reversed(peers) if dcmtk_first else peers
    return f"{first}, {second}, pynetdicom {pynetdicom.__version__}, pydicom {pydicom.__version__}"


@contextmanager
def orthanc(
    folder: Path,
    dicom_threads: int | None = 4,
    *,
    ports: tuple[int, int] | None = None,
    log: Path | None = None,
) -> Iterator[Peer]:
    """Orthanc with its storage and index in ``folder``; only in a private network namespace.

    ``ports``: (DICOM, HTTP), fixed so that a restart on the same ``folder`` keeps its address and data (default:
    free ports now). ``dicom_threads`` None leaves ``DicomThreadsCount`` to Orthanc. ``log`` defaults to
    ``folder/orthanc.log``. Its defaults otherwise: ``SyncStorageArea`` true (fsync of every stored file), no
    storage compression.
    """
    executable = tool("Orthanc")
    if not network_is_private():
        raise PeerError("Orthanc binds every interface: run only in a private network namespace")
    dicom_port, http_port = ports or (free_port(), free_port())
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
    if dicom_threads is None:
        del config["DicomThreadsCount"]
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    url = f"http://{HOST}:{http_port}"

    def ready() -> bool:
        try:
            http_json(url + "/system", timeout=2.0)
        except OSError:
            return False
        return accepts_tcp(dicom_port)

    with started([executable, str(path)], log or folder / "orthanc.log", ready, "Orthanc"):
        yield Peer("ORTHANC", dicom_port, url)


def gateway_config(
    folder: Path,
    *,
    allowed_calling_aes: Sequence[str],
    study: str,
    queue: str,
    models: dict[str, Path],
    routes: Sequence[tuple[str, str, str]] = (),
    delivery: str | None = None,
    port: int = 0,
) -> Any:
    """Write ``folder/vesalius.toml`` for a benchmark ``GatewayService`` and return it parsed (a ``GatewayConfig``).

    AE title VESALIUS on loopback, no free-space floor, storage, sqlite queue and audit log under ``store``, one
    worker, API off. ``study`` and ``queue``: extra lines for those tables; ``routes``: (name, modality, model).
    """
    from vesalius.gateway.config import parse_config

    allowed = ", ".join(f'"{ae}"' for ae in allowed_calling_aes)
    text = f"""
[dicom]
ae_title = "VESALIUS"
host = "{HOST}"
port = {port}
allowed_calling_aes = [{allowed}]
min_free_mb = 0

[storage]
root = "store"

[study]
{study}

[queue]
path = "store/queue.sqlite3"
{queue}

[workers]
count = 1

[models]
"""
    text += "".join(f'{name} = "{path}"\n' for name, path in models.items())
    for name, modality, model in routes:
        text += f'\n[[route]]\nname = "{name}"\nmodality = "{modality}"\nmodels = ["{model}"]\n'
    if delivery:
        text += f'\n[delivery]\ndicom = "{delivery}"\n'
    text += '\n[api]\nenabled = false\n\n[audit]\npath = "store/audit.jsonl"\n'
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vesalius.toml"
    path.write_text(text)
    return parse_config(text, path)
