"""Real DICOM peers for tests: DCMTK tools on free loopback ports, started and stopped with bounded waits.

Every server binds or is reached on 127.0.0.1 only, every wait has a deadline, and every process is stopped
(terminate, then kill) when its ``with`` block ends. A test that needs a DCMTK tool skips when it is absent.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"


def dcmtk(tool: str) -> str:
    """Path of a DCMTK executable; skips the test when it is not installed."""
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"DCMTK tool {tool} is not installed")
    return found


def dcmtk_env() -> dict[str, str]:
    """DCMTK reads TCP_NODELAY=1 from the environment (without it Nagle costs ~40 ms per message)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it; a tiny race with other processes is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = HOST) -> None:
    """Return once something accepts TCP connections on ``host:port``; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing accepted connections on {host}:{port} within {timeout} s")


def run_tool(args: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK client to completion (bounded) and capture its output."""
    return subprocess.run(
        [dcmtk(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, env=dcmtk_env(), check=False
    )


@dataclass
class RunningPeer:
    """A started DCMTK server: its AE title, port and log file."""

    ae_title: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop a server started by a test: terminate, wait ``timeout`` seconds, then kill (and reap it)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def answers_echo(ae_title: str, port: int) -> bool:
    """A C-ECHO with DCMTK echoscu: for servers (dcmqrscp) that stop when a probe connects and says nothing."""
    args = [dcmtk("echoscu"), "-aec", ae_title, "-to", "1", "-ta", "2", HOST, str(port)]
    try:
        return subprocess.run(args, capture_output=True, timeout=5, env=dcmtk_env(), check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@contextmanager
def running(
    args: Sequence[str],
    ae_title: str,
    port: int,
    log: Path,
    cwd: Path | None = None,
    probe: Callable[[], bool] | None = None,
) -> Iterator[RunningPeer]:
    """Start a DCMTK server process, wait (10 s at most) until ``probe`` (default: a TCP connect) succeeds."""
    probe = probe or (lambda: accepts_tcp(port))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [dcmtk(args[0]), *args[1:]], stdout=sink, stderr=subprocess.STDOUT, env=dcmtk_env(), cwd=cwd
        )
    try:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and process.poll() is None:
            if probe():
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"{args[0]} did not start on port {port}: {log.read_text(errors='replace')[-2000:]}")
        yield RunningPeer(ae_title, port, process, log)
    finally:
        stop_process(process)


@contextmanager
def storescp(out_dir: Path, port: int | None = None, ae_title: str = "STORESCP") -> Iterator[RunningPeer]:
    """DCMTK storescp writing every received instance into ``out_dir`` (``-od``), accepting all SOP classes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = ["storescp", "-aet", ae_title, "-od", str(out_dir), "+B", "--accept-all", "-dhl", str(port)]
    with running(args, ae_title, port, out_dir.parent / f"storescp-{port}.log") as peer:
        yield peer


def dcmqrscp_config(folder: Path, port: int, ae_title: str, move_targets: dict[str, int]) -> Path:
    """A dcmqrscp configuration: one archive AE in ``folder/db`` and the move destinations on loopback."""
    database = folder / "db"
    database.mkdir(parents=True, exist_ok=True)
    hosts = "\n".join(f"peer{i} = ({title}, {HOST}, {p})" for i, (title, p) in enumerate(move_targets.items()))
    config = folder / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n\n"
        f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
        "VendorTable BEGIN\nVendorTable END\n\n"
        f"AETable BEGIN\n{ae_title} {database} RW (200, 1024mb) ANY\nAETable END\n"
    )
    return config


@contextmanager
def dcmqrscp(
    folder: Path, files: Sequence[Path], ae_title: str = "PACS", move_targets: dict[str, int] | None = None
) -> Iterator[RunningPeer]:
    """DCMTK dcmqrscp as a small PACS holding ``files`` (indexed with dcmqridx), on loopback.

    It forks one process per association (the default): its single-process mode crashed after a release here.
    """
    port = free_port()
    config = dcmqrscp_config(folder, port, ae_title, move_targets or {})
    indexed = run_tool(["dcmqridx", str(folder / "db"), *(str(f) for f in files)])
    if indexed.returncode != 0:
        pytest.fail(f"dcmqridx failed: {indexed.stdout}{indexed.stderr}")
    args = ["dcmqrscp", "-c", str(config), "-dhl", str(port)]
    log = folder / "dcmqrscp.log"
    with running(args, ae_title, port, log, cwd=folder, probe=lambda: answers_echo(ae_title, port)) as peer:
        yield peer
