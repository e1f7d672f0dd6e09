"""The gateway's one configuration file, ``vesalius.toml``: ports, AE titles, paths, models, routes and keys.

Read with ``tomllib`` into a typed, frozen model that forbids unknown keys, so a misspelt key is an error, not a
silently ignored setting. Relative paths are resolved against the folder of the file, so a configuration means
the same thing whatever the working directory of the process that reads it. Secrets are stored hashed: API keys
as their SHA-256 (``vesalius.api.auth.hash_api_key``). See ``examples/vesalius.toml`` for every key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vesalius.core.errors import InputError
from vesalius.gateway.routing import Routing, RoutingRule
from vesalius.gateway.scp import validate_ae_title
from vesalius.gateway.scu import DicomPeer

__all__ = [
    "ApiConfig",
    "AuditConfig",
    "ConfigError",
    "DeliveryConfig",
    "DicomConfig",
    "GatewayConfig",
    "QueueConfig",
    "StorageConfig",
    "StudyConfig",
    "WorkersConfig",
    "load_config",
    "parse_config",
]

_SHA256 = re.compile(r"[0-9a-f]{64}")
MB = 1024 * 1024


class ConfigError(InputError):
    """The configuration file cannot be read or a field is invalid; the message names the file and the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _peer(value: str | None) -> str | None:
    if value is not None:
        try:
            DicomPeer.parse(value)
        except InputError as error:
            raise ValueError(str(error)) from None
    return value


class DicomConfig(_Section):
    """The DICOM listener: who we are, where we listen, whom we accept."""

    ae_title: str = "VESALIUS"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aes: list[str] | None = None
    """Leave out to accept any calling AE title (only sensible on a closed network)."""
    min_free_mb: int = Field(default=1024, ge=0)

    @property
    def min_free_bytes(self) -> int:
        return self.min_free_mb * MB

    @field_validator("ae_title")
    @classmethod
    def _title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _titles(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("is empty: leave it out to accept any AE title, or list at least one")
        return None if value is None else [validate_ae_title(title) for title in value]


class StorageConfig(_Section):
    """``root`` holds ``instances/`` (received DICOM), ``results/`` (job outputs) and ``uploads/`` (REST inputs)."""

    root: Path = Path("data")

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"


class StudyConfig(_Section):
    """When a received study is complete: quiet for ``quiet_seconds``, or the C-FIND count reached."""

    quiet_seconds: float = Field(default=30.0, gt=0)
    use_find_counts: bool = False
    """Ask ``find_peer`` (or the DICOM delivery destination) how many instances a new study holds."""
    find_peer: str | None = None
    """``AE@host:port`` of the archive to ask; defaults to ``delivery.dicom``."""

    @field_validator("find_peer")
    @classmethod
    def _find_peer(cls, value: str | None) -> str | None:
        return _peer(value)


class QueueConfig(_Section):
    """The durable job queue (vesalius.gateway.queue.QueueSettings)."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    path: Path = Path("data/queue.sqlite3")
    redis_url: str = "redis://localhost:6379/0"
    retries: int = Field(default=3, ge=0)
    retry_delay_seconds: float = Field(default=5.0, ge=0)
    lease_seconds: float = Field(default=60.0, gt=0)


class WorkersConfig(_Section):
    count: int = Field(default=1, ge=1, le=64)
    backend: Literal["torch", "onnxruntime", "onnxruntime-int8"] = "torch"
    """How workers run classification and segmentation models: torch, or the package's model.onnx /
    model.int8.onnx on ONNX Runtime (``vesalius export --onnx``, ``vesalius quantize --int8``)."""


class DeliveryConfig(_Section):
    """Where results go: a DICOM archive (C-STORE), a FHIR server, a folder of FHIR bundles; all optional."""

    dicom: str | None = None
    """The archive as ``AE@host:port``."""
    fhir_url: str | None = None
    fhir_folder: Path | None = None

    @field_validator("dicom")
    @classmethod
    def _dicom_peer(cls, value: str | None) -> str | None:
        return _peer(value)

    @field_validator("fhir_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, found {value!r}")
        return value


class ApiConfig(_Section):
    """The REST API; keys are stored as the hex SHA-256 of each key, under the name used as requester."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: dict[str, str] = Field(default_factory=dict)
    max_upload_mb: int = Field(default=2048, gt=0)
    max_upload_files: int = Field(default=5000, gt=0)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * MB

    @field_validator("api_keys")
    @classmethod
    def _hashed(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            if _SHA256.fullmatch(digest.lower()) is None:
                raise ValueError(
                    f"{name!r} must be the hex SHA-256 of the key (64 characters), never the key itself; "
                    'make one with `python -c "from vesalius.api.auth import new_api_key; print(new_api_key())"`'
                )
        return {name: digest.lower() for name, digest in value.items()}


class AuditConfig(_Section):
    path: Path = Path("data/audit.jsonl")


class GatewayConfig(_Section):
    """The whole ``vesalius.toml``; every section is optional and has safe defaults (loopback, no keys)."""

    dicom: DicomConfig = Field(default_factory=DicomConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    models: dict[str, Path] = Field(default_factory=dict)
    """Model name -> model package folder; the names that routes may use."""
    route: list[RoutingRule] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    source: Path | None = Field(default=None, exclude=True)
    """The file this configuration was read from (set by :func:`load_config`)."""

    @model_validator(mode="after")
    def _routes_name_known_models(self) -> GatewayConfig:
        for index, rule in enumerate(self.route, start=1):
            unknown = [name for name in rule.models if name not in self.models]
            if unknown:
                known = ", ".join(sorted(self.models)) or "none"
                raise ValueError(f"[[route]] #{index} names model(s) {unknown} not in [models] (known: {known})")
        if self.study.use_find_counts and self.study.find_peer is None and self.delivery.dicom is None:
            raise ValueError("study.use_find_counts needs study.find_peer or delivery.dicom to ask")
        return self

    @property
    def routing(self) -> Routing:
        return Routing(list(self.route), str(self.source or "<config>"))

    def find_peer(self) -> DicomPeer | None:
        """The archive asked for study instance counts, when ``use_find_counts`` is on."""
        if not self.study.use_find_counts:
            return None
        text = self.study.find_peer or self.delivery.dicom
        return DicomPeer.parse(text) if text else None

    def resolved(self, folder: Path) -> GatewayConfig:
        """A copy with every relative path made absolute against ``folder``."""

        def fix(path: Path) -> Path:
            return path if path.is_absolute() else (folder / path).resolve()

        delivery_folder = self.delivery.fhir_folder
        return self.model_copy(
            update={
                "storage": self.storage.model_copy(update={"root": fix(self.storage.root)}),
                "queue": self.queue.model_copy(update={"path": fix(self.queue.path)}),
                "models": {name: fix(path) for name, path in self.models.items()},
                "delivery": self.delivery.model_copy(
                    update={"fhir_folder": fix(delivery_folder) if delivery_folder is not None else None}
                ),
                "audit": self.audit.model_copy(update={"path": fix(self.audit.path)}),
            }
        )


def load_config(path: Path | str) -> GatewayConfig:
    """Read and check a ``vesalius.toml``; relative paths resolve against its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error}") from error
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> GatewayConfig:
    """Check TOML text as if read from ``path`` (used for errors and to resolve relative paths)."""
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    try:
        config = GatewayConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(f"{path}: {_describe(error)}") from None
    absolute = path.resolve()
    return config.resolved(absolute.parent).model_copy(update={"source": absolute})


def _describe(error: ValidationError) -> str:
    """One line per problem: the dotted field (route.1.models), the message, what was found."""
    problems = []
    for item in error.errors(include_url=False):
        parts = list(item["loc"])
        if len(parts) >= 2 and parts[0] == "route" and isinstance(parts[1], int):
            parts[:2] = [f"[[route]] #{parts[1] + 1}"]
        location = ".".join(str(part) for part in parts) or "(file)"
        message = str(item["msg"]).removeprefix("Value error, ")
        found = "" if item["type"] in ("missing", "value_error") else f" (found {item.get('input')!r:.60})"
        problems.append(f"{location}: {message}{found}")
    return "; ".join(problems)
