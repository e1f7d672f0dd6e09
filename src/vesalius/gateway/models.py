"""The models a gateway worker can run, by name: each package loaded once, on first use, and verified.

The registry holds only names and folders until a model is asked for, so it pickles cheaply into spawned worker
processes; each process loads (and verifies the hashes of) the packages it actually runs. ``run`` turns an engine's
output into the `vesalius.core.results` types the writers take, keeping the source series' identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom

from vesalius.core.errors import InputError
from vesalius.core.results import (
    ClassificationResult,
    ModelIdentity,
    NoduleFinding,
    NoduleResult,
    Result,
    SegmentationResult,
)
from vesalius.engines.common.package import PackageManifest, load_package

if TYPE_CHECKING:
    from vesalius.engines.detection.model import LungNoduleFinding

__all__ = ["ModelRegistry", "UnknownModelError", "nodule_result"]


class UnknownModelError(InputError):
    """A job or routing rule names a model the gateway's configuration does not list."""


@dataclass(frozen=True)
class _Loaded:
    manifest: PackageManifest
    identity: ModelIdentity
    engine: Any
    """Predictor, Classifier or LungNoduleModel, built on first use."""


def identity_of(manifest: PackageManifest) -> ModelIdentity:
    """The audit identity of a package: its manifest hash (hex, without the ``sha256:`` prefix)."""
    sha = manifest.manifest_sha256.removeprefix("sha256:")
    return ModelIdentity(name=manifest.name, version=manifest.version, sha256=sha, task=manifest.task)


def dicom_files(folder: Path) -> list[Path]:
    """The ``*.dcm`` files of a series folder, as InstanceStore writes them, in name order."""
    return sorted(path for path in folder.glob("*.dcm") if path.is_file())


def _series_uid_of(path: Path) -> str:
    """SeriesInstanceUID of a DICOM file, or of the first DICOM file in a folder."""
    first = path if path.is_file() else next(iter(dicom_files(path)), None)
    if first is None:
        raise InputError(f"{path}: no DICOM (*.dcm) files in the series folder")
    header = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    return str(header.get("SeriesInstanceUID", ""))


def nodule_result(findings: Iterable[LungNoduleFinding], series_uid: str, model: ModelIdentity) -> NoduleResult:
    """Core nodule findings from the detection engine's LungNoduleFindings, most probable first."""
    converted = [
        NoduleFinding(
            centre=(float(f.centre[0]), float(f.centre[1]), float(f.centre[2])),
            diameter_mm=float(f.diameter_mm),
            probability=float(f.probability),
            nodule=bool(f.nodule),
            malignancy=None if f.malignancy is None else float(f.malignancy),
        )
        for f in findings
    ]
    converted.sort(key=lambda finding: finding.probability, reverse=True)
    return NoduleResult(series_instance_uid=series_uid, findings=tuple(converted), model=model)


class ModelRegistry:
    """Model name -> package folder; packages are loaded lazily, once per process, and verified on loading."""

    def __init__(
        self, packages: Mapping[str, Path | str], *, device: str = "cpu", tta: bool = False, backend: str = "torch"
    ) -> None:
        if backend not in ("torch", "onnxruntime", "onnxruntime-int8"):
            raise InputError(f"backend must be torch, onnxruntime or onnxruntime-int8; got {backend!r}")
        self.packages = {name: Path(folder) for name, folder in packages.items()}
        self.device = device
        self.tta = tta
        self.backend = backend
        self._manifests: dict[str, PackageManifest] = {}
        self._loaded: dict[str, _Loaded] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle names and folders only: each worker process loads its own engines."""
        return {"packages": self.packages, "device": self.device, "tta": self.tta, "backend": self.backend}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["packages"], device=state["device"], tta=state["tta"], backend=state.get("backend", "torch")
        )

    @property
    def names(self) -> list[str]:
        return sorted(self.packages)

    def manifest(self, name: str) -> PackageManifest:
        """The verified manifest of ``name`` (weights hashed once per process, engine not built)."""
        if name not in self._manifests:
            folder = self.packages.get(name)
            if folder is None:
                known = ", ".join(self.names) or "(none configured)"
                raise UnknownModelError(f"model {name!r} is not configured; known models: {known}")
            self._manifests[name] = load_package(folder).manifest
        return self._manifests[name]

    def identity(self, name: str) -> ModelIdentity:
        return identity_of(self.manifest(name))

    def task(self, name: str) -> str:
        return self.manifest(name).task

    def hashes(self) -> dict[str, str]:
        """Model name -> manifest SHA-256 (hex) for every configured model: what idempotency keys are built from."""
        return {name: self.identity(name).sha256 for name in self.names}

    def _engine(self, name: str) -> _Loaded:
        if name in self._loaded:
            return self._loaded[name]
        manifest = self.manifest(name)
        folder = self.packages[name]
        engine: Any
        if self.backend != "torch":
            engine = self._onnx_engine(name, manifest.task, folder)
        elif manifest.task == "segmentation":
            from vesalius.engines.segmentation.predict import Predictor

            engine = Predictor(load_package(folder, verify=False), device=self.device, tta=self.tta)
        elif manifest.task == "classification":
            from vesalius.engines.classification.engine import Classifier

            engine = Classifier(folder, device=self.device)
        else:
            from vesalius.engines.detection.model import LungNoduleModel

            engine = LungNoduleModel.from_package(folder, device=self.device)
        loaded = _Loaded(manifest, identity_of(manifest), engine)
        self._loaded[name] = loaded
        return loaded

    def _onnx_engine(self, name: str, task: str, folder: Path) -> Any:
        """The package's ONNX graph on ONNX Runtime: same interface as the torch engines, no torch needed."""
        from vesalius.deploy.runtime import INT8_FILE, ONNX_FILE, OnnxClassifier, OnnxSegmenter

        graph = INT8_FILE if self.backend.endswith("int8") else ONNX_FILE
        if task == "segmentation":
            return OnnxSegmenter(folder, graph=graph, tta=self.tta)
        if task == "classification":
            return OnnxClassifier(folder, graph=graph)
        raise InputError(f"model {name!r} ({folder}): backend {self.backend} runs classification and segmentation only")

    def run(self, name: str, series: Path, *, series_uid: str | None = None) -> Result:
        """Run model ``name`` on a series folder (or a single DICOM file); ``series_uid`` picks one series from a
        folder holding several. The result keeps the source identity, so writers can reference the source."""
        loaded = self._engine(name)
        task = loaded.manifest.task
        if task == "classification":
            return self._classify(loaded, Path(series))
        from vesalius.io.read import read_volume

        volume = read_volume(series, series_uid=series_uid)
        uid = volume.identity.series_instance_uid or series_uid or ""
        if task == "segmentation":
            labels = loaded.engine.predict(volume)
            if not labels.identity.sop_instance_uids:
                raise InputError(f"series {uid}: the volume carries no SOP instance UIDs; a SEG cannot reference it")
            names = {index: label for index, label in loaded.manifest.labels.items() if index != 0}
            return SegmentationResult(labels=labels, label_names=names, model=loaded.identity)
        return nodule_result(loaded.engine.find(volume), uid, loaded.identity)

    def _classify(self, loaded: _Loaded, series: Path) -> ClassificationResult:
        from vesalius.engines.classification.dataset import ImageSource

        files = [series] if series.is_file() else dicom_files(series)
        source = ImageSource(files[0] if len(files) == 1 else series)  # one image: the file; several: a volume
        uid = _series_uid_of(series)
        classifier = loaded.engine
        row = np.asarray(classifier.probabilities([source])[0], dtype=np.float64)
        names: list[str] = list(classifier.plan.class_names)
        probabilities = {class_name: float(p) for class_name, p in zip(names, row, strict=True)}
        predicted = str(classifier.label(row))
        if predicted not in probabilities:  # multi-label: several (or no) labels; report the most probable
            predicted = names[int(np.argmax(row))]
        grade = names.index(predicted) if classifier.plan.kind == "ordinal" else None
        return ClassificationResult(
            series_instance_uid=uid,
            probabilities=probabilities,
            predicted=predicted,
            model=loaded.identity,
            grade=grade,
        )
