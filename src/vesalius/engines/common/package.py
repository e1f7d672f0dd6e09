"""The model package every task engine ships: a folder that loads without unpickling and detects tampering.

Layout: ``package.json`` (a :class:`PackageManifest`), ``weights.safetensors`` and any extra files (e.g.
``model.onnx``). The manifest lists every file with its SHA-256 and hashes itself (``manifest_sha256``, over
its canonical JSON), so a flipped byte in the weights or an edited plan in ``package.json`` is caught.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors.torch import load_file, save_file

from vesalius import __version__
from vesalius.core.errors import PackageError, PackageIntegrityError, UnsafePackageError

SCHEMA_VERSION = 1
MANIFEST = "package.json"
WEIGHTS = "weights.safetensors"
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
"""Suffixes of pickled checkpoints (torch.save, nnU-Net, Lightning): refused in a package, never loaded."""

TaskName = Literal["segmentation", "classification", "detection"]
JsonObject = Mapping[str, Any] | BaseModel
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


@dataclass(frozen=True)
class ModelPackage:
    """A loaded (and, unless asked otherwise, verified) package; weights are read only when asked for."""

    folder: Path
    manifest: PackageManifest

    def state_dict(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The weights, read by safetensors: plain tensors, no code runs."""
        return load_file(self.folder / WEIGHTS, device=str(device))

    def path(self, name: str) -> Path:
        """A file the manifest lists (e.g. ``model.onnx``); unlisted files are not part of the package."""
        if name not in self.manifest.files:
            raise PackageError(f"{self.folder}: package lists no file {name!r}; it lists {sorted(self.manifest.files)}")
        return self.folder / name


def save_package(
    folder: Path | str,
    *,
    name: str,
    version: str,
    task: TaskName,
    labels: Mapping[int, str],
    plan: JsonObject,
    metrics: JsonObject,
    data_fingerprint: JsonObject,
    state_dict: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, Path] | None = None,
    overwrite: bool = False,
    postprocessing: Mapping[str, Any] | None = None,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write a package; the same inputs give the same bytes and hashes (only ``created`` differs).

    With ``overwrite=True`` the listed files and ``package.json`` are replaced; other files already in the
    folder stay but are not part of the package. ``package.json`` is written last and atomically, so an
    interrupted save leaves a package that fails verification rather than one that lies.
    ``weights_dtype`` (e.g. ``torch.float16``) stores floating-point weights at that precision, halving the
    package; ``load_state_dict`` casts them back to the network's dtype.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PackageError(f"{folder}: expected a folder for the model package, found a file")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise PackageError(f"{folder}: folder is not empty; pass overwrite=True to replace the package in it")
    extras = dict(extra_files or {})
    for file_name, source in extras.items():
        problem = "the name is reserved for the weights" if file_name == WEIGHTS else _file_name_problem(file_name)
        if problem:
            raise PackageError(f"extra file {file_name!r}: {problem}")
        if not Path(source).is_file():
            raise PackageError(f"extra file {file_name!r}: source {source} is not a file")
    placeholder = "sha256:" + "0" * 64
    fields = {
        "name": name,
        "version": version,
        "task": task,
        "labels": dict(labels),
        "plan": _as_dict(plan),
        "metrics": _as_dict(metrics),
        "data_fingerprint": _as_dict(data_fingerprint),
        "postprocessing": dict(postprocessing or {}),
        "created": datetime.now(UTC).replace(microsecond=0),
        "vesalius_version": __version__,
        "files": dict.fromkeys([WEIGHTS, *extras], placeholder),
        "manifest_sha256": placeholder,
    }
    try:  # validate before writing anything, so a bad version or label leaves the folder untouched
        draft = PackageManifest.model_validate(fields)
    except ValidationError as error:
        raise PackageError(f"{folder}: cannot build {MANIFEST}: {_describe(error)}") from error
    tensors = _savable(state_dict, weights_dtype)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"vesalius": json.dumps({"name": name, "version": version}, sort_keys=True)}
    _atomic(folder / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    for file_name, source in extras.items():
        target = folder / file_name
        if not (target.exists() and target.samefile(source)):
            shutil.copyfile(source, target)
    draft = draft.model_copy(update={"files": {f: _sha256(folder / f) for f in sorted(draft.files)}})
    data = json.loads(draft.model_dump_json(exclude={"manifest_sha256"}))
    data["manifest_sha256"] = _canonical_sha256(data)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    _atomic(folder / MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return folder


def load_package(folder: Path | str, verify: bool = True) -> ModelPackage:
    """Read a package, verifying every hash first; ``verify=False`` is an escape hatch for forensics only."""
    folder = Path(folder)
    manifest, data = _read_manifest(folder)
    if verify and (problems := _integrity_problems(folder, manifest, data)):
        raise PackageIntegrityError(folder, problems)
    return ModelPackage(folder=folder, manifest=manifest)


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


def as_stored(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The weights as a package saved with ``weights_dtype=dtype`` gives them back: floating-point tensors rounded
    through ``dtype`` and returned in their own dtype. A trainer scores these, so that the metrics a package
    records are those of the weights it ships."""
    return {
        key: tensor.detach().cpu().to(dtype).to(tensor.dtype)
        if dtype is not None and tensor.is_floating_point()
        else tensor.detach().cpu()
        for key, tensor in state_dict.items()
    }


def _savable(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no shared storage, as safetensors requires."""
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor):
            raise PackageError(f"state_dict[{key!r}]: expected a torch.Tensor, found {type(tensor).__name__}")
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        pointer = tensor.untyped_storage().data_ptr()
        tensor = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
        tensors[key] = tensor.contiguous()
    return tensors


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


def _as_dict(value: JsonObject) -> dict[str, Any]:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else dict(value)


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in error.errors())


def _atomic(path: Path, write: Callable[[str], object]) -> None:
    """Write to a temporary sibling, then rename: readers see the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.touch()  # created with the umask's mode, which safetensors (always 0600) does not honour
        mode = temporary.stat().st_mode
        write(str(temporary))
        temporary.chmod(mode)
        with temporary.open("rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
