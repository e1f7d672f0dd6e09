"""The model package's manifest, ``package.json``: reading and verifying it without torch.

Split from ``package`` so that a torch-free runtime (ONNX Runtime, ``vesalius.deploy.runtime``) can check a
package's hashes before it opens any file; ``package`` re-exports every name here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from vesalius import __version__
from vesalius.core.errors import PackageError, PackageIntegrityError, UnsafePackageError

SCHEMA_VERSION = 1
MANIFEST = "package.json"
WEIGHTS = "weights.safetensors"
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
"""Suffixes of pickled checkpoints (torch.save, nnU-Net, Lightning): refused in a package, never loaded."""

TaskName = Literal["segmentation", "classification", "detection"]

Sha256 = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class PackageManifest(BaseModel):
    """``package.json``: what the model is, how it was planned and trained, and the hash of every file.

    ``labels`` maps class index -> name (index 0 is background for segmentation); JSON stores the keys as
    strings and validation turns them back into ints.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?$")
    task: TaskName
    labels: dict[int, str]
    plan: dict[str, Any]
    metrics: dict[str, Any]
    data_fingerprint: dict[str, Any]
    postprocessing: dict[str, Any] = Field(
        default_factory=dict,
        description="What the engine applies after the network, chosen on validation data "
        "(segmentation: keep_largest_component, a list of class indices)",
    )
    created: AwareDatetime
    vesalius_version: str
    files: dict[str, Sha256]
    manifest_sha256: Sha256

    @field_validator("labels")
    @classmethod
    def _labels_named_once(cls, labels: dict[int, str]) -> dict[int, str]:
        if any(index < 0 for index in labels):
            raise ValueError(f"label indices must be >= 0, found {sorted(labels)}")
        names = [name.strip() for name in labels.values()]
        if "" in names or len(set(names)) != len(names):
            raise ValueError(f"label names must be non-empty and unique, found {names}")
        return dict(sorted(labels.items()))

    @field_validator("files")
    @classmethod
    def _files_are_plain_and_include_weights(cls, files: dict[str, str]) -> dict[str, str]:
        if WEIGHTS not in files:
            raise ValueError(f"files must list {WEIGHTS}, found {sorted(files)}")
        for name in files:
            if problem := _file_name_problem(name):
                raise ValueError(problem)
        return dict(sorted(files.items()))


def load_manifest(folder: Path | str, verify: bool = True) -> PackageManifest:
    """A package's manifest after every hash is checked (what ``load_package`` does, without reading weights)."""
    folder = Path(folder)
    manifest, data = _read_manifest(folder)
    if verify and (problems := _integrity_problems(folder, manifest, data)):
        raise PackageIntegrityError(folder, problems)
    return manifest


def verify_package(folder: Path | str) -> list[str]:
    """Every problem found in a package (unreadable manifest, edited manifest, missing or changed file)."""
    folder = Path(folder)
    try:
        manifest, data = _read_manifest(folder)
    except PackageError as error:
        return [str(error)]
    return _integrity_problems(folder, manifest, data)


def _read_manifest(folder: Path) -> tuple[PackageManifest, dict[str, Any]]:
    """Parse and validate ``package.json``; refuse a folder that offers pickled weights instead."""
    if not folder.is_dir():
        raise PackageError(f"{folder}: no such model package folder")
    if not (folder / WEIGHTS).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafePackageError(
                f"{folder}: {WEIGHTS} is missing and {', '.join(pickles)} holds pickled weights, which are not "
                "loaded (unpickling can run arbitrary code); convert a trusted checkpoint with save_package"
            )
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise PackageError(f"{folder}: no {MANIFEST}; not a Vesalius model package") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PackageError(f"{folder / MANIFEST}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise PackageError(f"{folder / MANIFEST}: expected a JSON object, found {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise PackageError(
            f"{folder / MANIFEST}: schema_version {data.get('schema_version', '(missing)')!r} is not supported "
            f"(this Vesalius {__version__} reads {SCHEMA_VERSION})"
        )
    try:
        return PackageManifest.model_validate(data), data
    except ValidationError as error:
        raise PackageError(f"{folder / MANIFEST}: {_describe(error)}") from error


def _integrity_problems(folder: Path, manifest: PackageManifest, data: Mapping[str, Any]) -> list[str]:
    """Compare the manifest's own hash and every listed file's hash with what is on disk."""
    problems: list[str] = []
    found = _canonical_sha256({k: v for k, v in data.items() if k != "manifest_sha256"})
    if found != manifest.manifest_sha256:
        problems.append(f"{MANIFEST} was edited: manifest_sha256 expected {manifest.manifest_sha256}, found {found}")
    for file_name, expected in manifest.files.items():
        path = folder / file_name
        if not path.is_file():
            problems.append(f"{file_name} is missing (expected {expected})")
        elif (actual := _sha256(path)) != expected:
            problems.append(f"{file_name} changed: expected {expected}, found {actual}")
    return problems


def _file_name_problem(name: str) -> str | None:
    """A listed file is a plain name inside the folder (no separators, ``..`` or hidden files) and no pickle."""
    if not _FILE_NAME.match(name) or name == MANIFEST:
        return f"file name {name!r} must be a plain name of letters, digits, '.', '_' or '-', not {MANIFEST}"
    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        return f"file {name!r} has a pickle suffix; pickled files have no place in a package"
    return None


def _sha256(path: Path) -> str:
    """Streamed, so a weights file of hundreds of MB is never held in memory."""
    with path.open("rb") as stream:
        return "sha256:" + hashlib.file_digest(stream, "sha256").hexdigest()


def _canonical_sha256(data: Mapping[str, Any]) -> str:
    """Hash of sorted-key, whitespace-free JSON, so re-indenting package.json is harmless but edits are not."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in error.errors())
