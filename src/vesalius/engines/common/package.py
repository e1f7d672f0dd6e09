"""The model package every task engine ships: a folder that loads without unpickling and detects tampering.

Layout: ``package.json`` (a :class:`PackageManifest`), ``weights.safetensors`` and any extra files (e.g.
``model.onnx``). The manifest lists every file with its SHA-256 and hashes itself (``manifest_sha256``, over
its canonical JSON), so a flipped byte in the weights or an edited plan in ``package.json`` is caught.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file

from vesalius import __version__
from vesalius.core.errors import PackageError
from vesalius.engines.common.manifest import (  # re-exported: the manifest half of a package needs no torch
    MANIFEST,
    PICKLE_SUFFIXES,
    SCHEMA_VERSION,
    WEIGHTS,
    PackageManifest,
    Sha256,
    TaskName,
    _canonical_sha256,
    _describe,
    _file_name_problem,
    _sha256,
    load_manifest,
    verify_package,
)

JsonObject = Mapping[str, Any] | BaseModel

__all__ = [
    "MANIFEST",
    "PICKLE_SUFFIXES",
    "SCHEMA_VERSION",
    "WEIGHTS",
    "JsonObject",
    "ModelPackage",
    "PackageManifest",
    "Sha256",
    "TaskName",
    "as_stored",
    "load_manifest",
    "load_package",
    "resave_package",
    "save_package",
    "verify_package",
]


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
    return ModelPackage(folder=folder, manifest=load_manifest(folder, verify))


MANIFEST_FIELDS = ("name", "version", "task", "labels", "plan", "metrics", "data_fingerprint", "postprocessing")


def resave_package(
    package: ModelPackage,
    folder: Path | str | None = None,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    extra_files: Mapping[str, Path] | None = None,
    weights_dtype: torch.dtype | None = None,
    **fields: Any,
) -> Path:
    """Save ``package`` again, in its own folder or in ``folder``, with the manifest ``fields`` given replaced
    (plan, metrics, postprocessing...) and ``extra_files`` added. Without a new ``state_dict`` the weights keep
    their bytes and the package's other files (an ONNX graph) stay; new weights drop them, as they no longer
    describe the network."""
    unknown = sorted(set(fields) - set(MANIFEST_FIELDS))
    if unknown:
        raise PackageError(f"cannot change {unknown} of a package; the fields are {', '.join(MANIFEST_FIELDS)}")
    manifest = package.manifest
    values = {name: getattr(manifest, name) for name in MANIFEST_FIELDS} | fields
    kept = {} if state_dict is not None else {n: package.folder / n for n in manifest.files if n != WEIGHTS}
    return save_package(
        package.folder if folder is None else folder,
        **values,
        state_dict=package.state_dict() if state_dict is None else state_dict,  # as stored: same bytes
        extra_files={**kept, **(extra_files or {})},
        overwrite=True,
        weights_dtype=weights_dtype,
    )


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


def _as_dict(value: JsonObject) -> dict[str, Any]:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else dict(value)


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
