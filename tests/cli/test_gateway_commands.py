"""`vesalius serve` and `vesalius pull`: help, configuration errors, and a pull from DCMTK dcmqrscp."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests import dicom_factory as factory
from tests.gateway.dicom_peers import HOST, dcmqrscp, free_port, wait_for_port
from tests.gateway.test_service import HASHES, fake_processor
from vesalius.cli import gateway
from vesalius.cli.main import app
from vesalius.gateway.config import GatewayConfig, load_config
from vesalius.gateway.jobs import JobState, Processor
from vesalius.gateway.queue import JobQueue
from vesalius.gateway.service import queue_settings

runner = CliRunner()


def write_config(folder: Path, extra: str = "") -> Path:
    path = folder / "vesalius.toml"
    path.write_text(
        '[dicom]\nae_title = "VESALIUS"\n[storage]\nroot = "store"\n[queue]\npath = "store/queue.sqlite3"\n'
        '[models]\ntoy = "models/toy"\n[[route]]\nmodality = "CT"\nmodels = ["toy"]\n' + extra
    )
    return path


def fake_build(config: GatewayConfig) -> tuple[Processor, dict[str, str]]:
    return fake_processor, dict(HASHES)


def test_serve_and_pull_have_help() -> None:
    for command in ("serve", "pull"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "--config" in result.output
    assert "--from" in runner.invoke(app, ["pull", "--help"]).output


def test_a_bad_config_exits_2_naming_the_file_and_field(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[workers]\ncount = -1\n")
    result = runner.invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output
    assert "workers.count" in result.output
    missing = runner.invoke(app, ["serve", "--config", str(tmp_path / "absent.toml")])
    assert missing.exit_code == 2
    assert "absent.toml: cannot read" in missing.output


@pytest.fixture
def archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A CT study in a dcmqrscp archive, a gateway config, and the fake processor: (series, source, config path)."""
    ct = factory.write_series(tmp_path / "ct", factory.random_values((16, 12, 5), seed=1), factory.axial())
    monkeypatch.setattr(gateway, "build_processor", fake_build)
    path = write_config(tmp_path)
    with dcmqrscp(tmp_path / "pacs", ct.files, ae_title="PACS") as peer:
        yield ct, f"PACS@{HOST}:{peer.port}", path


def test_pull_stores_the_study_and_queues_one_job(archive: tuple[factory.WrittenSeries, str, Path]) -> None:
    ct, source, path = archive
    result = runner.invoke(app, ["pull", "--study", ct.study_uid, "--from", source, "--config", str(path)])
    assert result.exit_code == 0, result.output
    # "pulled 5 of N": dcmqrscp's C-FIND count (N) is occasionally one short; what C-GET stored is what counts
    assert "pulled 5 of " in result.output
    assert f"instances of study {ct.study_uid} from {source}" in result.output
    config = load_config(path)
    stored = {p.stem for p in (config.storage.instances / ct.study_uid).rglob("*.dcm")}
    assert stored == set(ct.sop_instance_uids)
    queue = JobQueue(queue_settings(config))
    assert queue.counts()[JobState.QUEUED] == 1

    again = runner.invoke(app, ["pull", "--study", ct.study_uid, "--from", source, "--config", str(path)])
    assert again.exit_code == 0, again.output
    assert "already submitted as job" in again.output
    assert sum(queue.counts().values()) == 1


def test_pull_wait_runs_the_job_and_prints_the_results(archive: tuple[factory.WrittenSeries, str, Path]) -> None:
    ct, source, path = archive
    args = ["pull", "--study", ct.study_uid, "--from", source, "--config", str(path), "--wait", "--timeout", "60"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert ": done" in result.output
    folder = load_config(path).storage.results
    assert f"results in {folder}" in result.output
    assert "csv    result.csv" in result.output


def test_pull_of_an_unknown_study_fails_clearly(archive: tuple[factory.WrittenSeries, str, Path]) -> None:
    _, source, path = archive
    unknown = factory.generate_uid()
    result = runner.invoke(app, ["pull", "--study", unknown, "--from", source, "--config", str(path)])
    assert result.exit_code == 2
    assert f"study {unknown}: {source} has no such study" in result.output


def test_serve_runs_until_sigterm_and_stops_cleanly(tmp_path: Path) -> None:
    """The real command in a subprocess, with no models configured (so nothing heavy loads)."""
    dicom_port, api_port = free_port(), free_port()
    path = tmp_path / "vesalius.toml"
    path.write_text(
        f'[dicom]\nport = {dicom_port}\n[storage]\nroot = "store"\n[queue]\npath = "store/q.sqlite3"\n'
        f"[study]\nquiet_seconds = 1\n[api]\nport = {api_port}\n"
    )
    command = [str(Path(sys.executable).parent / "vesalius"), "serve", "--config", str(path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment) as process:
        try:
            wait_for_port(dicom_port, timeout=60)
            wait_for_port(api_port, timeout=30)
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    text = output.decode()
    assert process.returncode == 0, text
    assert f"DICOM VESALIUS on 127.0.0.1:{dicom_port}" in text
    assert "stopped" in text
