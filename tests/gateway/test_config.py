"""vesalius.toml: the shipped example parses, every error names the file and the field, relative paths resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vesalius.api.auth import hash_api_key
from vesalius.gateway.config import ConfigError, GatewayConfig, load_config
from vesalius.gateway.studies import SeriesInfo

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vesalius.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "vesalius.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def series(modality: str, description: str = "", rows: int = 64, count: int = 20) -> SeriesInfo:
    return SeriesInfo("1.2.3", modality, description, "", rows, rows, count, Path("."))


def test_the_example_parses_and_documents_every_section() -> None:
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.dicom.ae_title == "VESALIUS"
    assert config.dicom.host == "127.0.0.1"
    assert config.api.host == "127.0.0.1"
    assert config.storage.root == (EXAMPLE.parent / "data").resolve()
    assert config.models["cxr-pneumonia"] == (EXAMPLE.parents[1] / "models" / "cxr-pneumonia" / "package").resolve()
    assert config.routing.models_for(series("CR")) == ["cxr-pneumonia"]
    assert config.routing.models_for(series("MR", "Hippocampus T1")) == ["hippocampus"]
    assert config.routing.models_for(series("CT")) == []
    assert config.delivery.dicom == "ORTHANC@127.0.0.1:4242"
    text = EXAMPLE.read_text()
    for section, model in GatewayConfig.model_fields.items():
        if section == "source":
            continue
        assert f"[{section}]" in text or f"[[{section}]]" in text, section
        keys = getattr(model.annotation, "model_fields", {})
        for key in keys:
            assert f"{key} =" in text or f"# {key} =" in text or f"[{section}.{key}]" in text, f"{section}.{key}"


def test_defaults_bind_loopback_and_need_no_file_content(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.dicom.host == "127.0.0.1"
    assert config.api.host == "127.0.0.1"
    assert config.dicom.allowed_calling_aes is None
    assert config.route == []
    assert config.find_peer() is None


def test_relative_paths_resolve_against_the_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        '[storage]\nroot = "store"\n[queue]\npath = "q/jobs.sqlite3"\n[audit]\npath = "/var/tmp/audit.jsonl"\n'
        '[models]\nm = "../pkg"\n[delivery]\nfhir_folder = "fhir"\n',
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/vesalius.toml"))
    folder = path.parent.resolve()
    assert config.storage.root == folder / "store"
    assert config.storage.instances == folder / "store" / "instances"
    assert config.queue.path == folder / "q" / "jobs.sqlite3"
    assert config.audit.path == Path("/var/tmp/audit.jsonl")
    assert config.models["m"] == tmp_path.resolve() / "pkg"
    assert config.delivery.fhir_folder == folder / "fhir"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[dicom]\nport = 70000\n", "dicom.port"),
        ("[dicom]\nae_title = 'A TITLE LONGER THAN 16'\n", "dicom.ae_title"),
        ("[dicom]\nallowed_calling_aes = []\n", "dicom.allowed_calling_aes"),
        ("[dicom]\nprot = 104\n", "dicom.prot"),
        ("[queue]\nbackend = 'kafka'\n", "queue.backend"),
        ("[study]\nquiet_seconds = 0\n", "study.quiet_seconds"),
        ("[delivery]\ndicom = 'ORTHANC'\n", "delivery.dicom"),
        ("[delivery]\nfhir_url = 'ftp://x'\n", "delivery.fhir_url"),
        ("[api.api_keys]\nalice = 'plain-text-key'\n", "api.api_keys"),
        ("[workers]\ncount = 0\n", "workers.count"),
        ("[[route]]\nmodality = 'CT'\n", "[[route]] #1.models"),
        ("[models]\na = 'p'\n[[route]]\nmodels = ['a']\n[[route]]\nmax_rows = 0\nmodels = ['a']\n", "[[route]] #2"),
        ("[[route]]\nseries_description = '(unclosed'\nmodels = ['a']\n[models]\na = 'p'\n", "series_description"),
        ("surprise = 1\n", "surprise"),
    ],
)
def test_bad_fields_are_named_with_the_file(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert field in message


def test_routes_may_only_name_configured_models(tmp_path: Path) -> None:
    path = write(tmp_path, '[models]\nknown = "p"\n[[route]]\nmodality = "CT"\nmodels = ["known", "typo"]\n')
    with pytest.raises(ConfigError, match=r"\[\[route\]\] #1 names model\(s\) \['typo'\] not in \[models\]"):
        load_config(path)


def test_find_counts_need_an_archive_to_ask(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="use_find_counts needs"):
        load_config(write(tmp_path, "[study]\nuse_find_counts = true\n"))
    config = load_config(write(tmp_path, '[study]\nuse_find_counts = true\n[delivery]\ndicom = "PACS@10.0.0.5:104"\n'))
    peer = config.find_peer()
    assert peer is not None
    assert (peer.ae_title, peer.host, peer.port) == ("PACS", "10.0.0.5", 104)


def test_api_keys_are_stored_hashed(tmp_path: Path) -> None:
    digest = hash_api_key("secret")
    config = load_config(write(tmp_path, f'[api.api_keys]\nward = "{digest.upper()}"\n'))
    assert config.api.api_keys == {"ward": digest}


def test_unreadable_and_invalid_toml_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{missing}: cannot read"):
        load_config(missing)
    broken = write(tmp_path, "[dicom\n")
    with pytest.raises(ConfigError, match=f"{broken}: not valid TOML"):
        load_config(broken)


def test_the_worker_backend_is_read_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    from vesalius.cli.gateway import with_backend

    file = tmp_path / "vesalius.toml"
    file.write_text("[workers]\nbackend = 'onnxruntime'\n")
    config = load_config(file)
    assert config.workers.backend == "onnxruntime"
    assert with_backend(config, "onnxruntime-int8").workers.backend == "onnxruntime-int8"
    assert with_backend(config, None) is config
    with pytest.raises(ValidationError):
        with_backend(config, "tensorrt")
