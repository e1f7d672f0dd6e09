"""The model registry: packages by name, loaded lazily and verified, engine outputs as core Result types that keep
the source series' geometry and identity. Also holds the small study builders the processor tests share."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests import dicom_factory as factory
from tests.engines.classification.factory import random_classifier_package
from tests.engines.segmentation.test_predict import make_package
from vesalius.core.errors import InputError, PackageIntegrityError
from vesalius.core.results import ClassificationResult, ModelIdentity, NoduleFinding, NoduleResult, SegmentationResult
from vesalius.engines.classification.engine import Classifier
from vesalius.engines.classification.plan import make_classification_plan
from vesalius.engines.common.package import load_package
from vesalius.engines.detection.model import LungNoduleFinding
from vesalius.gateway.models import ModelRegistry, UnknownModelError, nodule_result
from vesalius.io.read import read_volume

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CXR_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "cxr-pneumonia" / "package"
CT_SHAPE = (24, 20, 6)


def write_ct(study_root: Path, study_uid: str, *, slices: int = CT_SHAPE[2], seed: int = 1) -> factory.WrittenSeries:
    """A small axial CT series stored as InstanceStore does: <study>/<series>/<sop>.dcm."""
    series_uid = generate_uid()
    return factory.write_series(
        study_root / study_uid / series_uid,
        factory.random_values((*CT_SHAPE[:2], slices), seed=seed),
        factory.axial(spacing=(0.7, 0.8, 2.5)),
        study_uid=study_uid,
        series_uid=series_uid,
    )


def write_radiograph(study_root: Path, study_uid: str, *, modality: str = "CR", size: int = 160) -> Path:
    """A one-instance chest-radiograph-like CR image (bright body, darker lungs), with the modules SR needs."""
    series_uid, sop_uid = generate_uid(), generate_uid()
    folder = study_root / study_uid / series_uid
    folder.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", pydicom.Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Chest", "VES-CR-1", "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "093000", "ACC0002", "2"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, 1
    ds.SeriesDescription, ds.BodyPartExamined = "PA chest", "CHEST"
    ds.Manufacturer = "Vesalius test factory"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    y, x = np.mgrid[0:size, 0:size] / size
    lungs = ((x - 0.3) ** 2 / 0.03 + (y - 0.5) ** 2 / 0.12 < 1) | ((x - 0.7) ** 2 / 0.03 + (y - 0.5) ** 2 / 0.12 < 1)
    pixels = np.where(lungs, 600, 2400) + np.random.default_rng(0).normal(0, 60, (size, size))
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.PixelData = np.clip(pixels, 0, 4095).astype(np.uint16).tobytes()
    path = folder / f"{sop_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def ordinal_package(folder: Path) -> Path:
    """An untrained 3-grade ordinal classifier on 32 x 32 images (a ResNet-10 at quarter width)."""
    plan = make_classification_plan(
        dataset_name="grades",
        kind="ordinal",
        class_names=["G0", "G1", "G2"],
        class_counts=[10, 10, 10],
        median_size=[32, 32],
        channels=1,
        architecture="resnet10",
        width=0.25,
    )
    return random_classifier_package(folder, plan)


@pytest.fixture(scope="module")
def seg_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("packages") / "tiny-seg"
    make_package(folder, seed=0)
    return folder


def test_a_segmentation_is_a_label_volume_on_the_source_grid_with_its_identity(
    tmp_path: Path, seg_package: Path
) -> None:
    study_uid = generate_uid()
    ct = write_ct(tmp_path, study_uid)
    registry = ModelRegistry({"seg": seg_package})
    result = registry.run("seg", ct.folder)
    assert isinstance(result, SegmentationResult)
    source = read_volume(ct.folder)
    assert result.labels.shape == CT_SHAPE
    np.testing.assert_allclose(result.labels.affine, ct.affine, atol=1e-4)
    assert np.array_equal(result.labels.affine, source.affine)
    identity = result.labels.identity
    assert identity.series_instance_uid == ct.series_uid
    assert identity.study_instance_uid == study_uid
    assert identity.sop_instance_uids == tuple(ct.sop_instance_uids)  # k order
    assert result.label_names == {1: "class1", 2: "class2"}
    manifest = load_package(seg_package).manifest
    assert result.model.sha256 == manifest.manifest_sha256.removeprefix("sha256:")
    assert (result.model.name, result.model.version, result.model.task) == ("tiny", "0.1.0", "segmentation")
    assert registry.task("seg") == "segmentation"


def test_a_radiograph_is_classified_from_its_file_with_the_shipped_model(tmp_path: Path) -> None:
    path = write_radiograph(tmp_path, generate_uid())
    registry = ModelRegistry({"cxr": CXR_PACKAGE})
    result = registry.run("cxr", path.parent)  # the series folder: one instance goes in as the file
    assert isinstance(result, ClassificationResult)
    assert result.series_instance_uid == pydicom.dcmread(path).SeriesInstanceUID
    assert set(result.probabilities) == {"NORMAL", "PNEUMONIA"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    from vesalius.engines.classification.dataset import ImageSource

    classifier = Classifier(CXR_PACKAGE, device="cpu")
    row = classifier.probabilities([ImageSource(path)])[0]
    assert result.probabilities["PNEUMONIA"] == pytest.approx(float(row[1]), abs=1e-5)
    assert result.predicted == classifier.label(row)
    assert result.grade is None
    assert result.model.task == "classification"
    assert result.model.name == "cxr-pneumonia"
    assert registry.run("cxr", path) == result  # the file itself gives the same answer


def test_an_ordinal_classifier_grades_by_the_index_of_the_predicted_class(tmp_path: Path) -> None:
    package = ordinal_package(tmp_path / "grades")
    path = write_radiograph(tmp_path / "study", generate_uid())
    result = ModelRegistry({"grades": package}).run("grades", path)
    assert isinstance(result, ClassificationResult)
    assert result.predicted == max(result.probabilities, key=lambda name: result.probabilities[name])
    assert result.grade == ["G0", "G1", "G2"].index(result.predicted)


def test_nodule_findings_become_core_findings_most_probable_first() -> None:
    model = ModelIdentity(name="lung-nodules", version="0.1.0", sha256="c" * 64, task="detection")
    raw = [
        LungNoduleFinding((1.0, 2.0, 3.0), 6.0, 0.2, 0.4, 0.1, nodule=False),
        LungNoduleFinding((4.5, 5.0, 6.0), 8.5, 0.9, 0.9, 0.9, nodule=True),
    ]
    result = nodule_result(raw, "1.2.3", model)
    assert isinstance(result, NoduleResult)
    assert result.series_instance_uid == "1.2.3"
    assert result.model == model
    assert [f.probability for f in result.findings] == [0.9, 0.2]
    assert result.findings[0] == NoduleFinding((4.5, 5.0, 6.0), 8.5, 0.9, nodule=True, malignancy=None)
    assert len(result.nodules) == 1


def test_packages_load_lazily_once_and_are_left_out_when_pickled(tmp_path: Path, seg_package: Path) -> None:
    registry = ModelRegistry({"seg": seg_package, "absent": tmp_path / "no-such-package"})
    assert registry.names == ["absent", "seg"]  # nothing read yet: an absent folder is only an error when used
    ct = write_ct(tmp_path, generate_uid())
    registry.run("seg", ct.folder)
    engine = registry._engine("seg").engine
    registry.run("seg", ct.folder)
    assert registry._engine("seg").engine is engine
    copy = pickle.loads(pickle.dumps(registry))
    assert copy.packages == registry.packages
    assert copy._loaded == {}
    with pytest.raises(UnknownModelError, match=r"'other'.*absent, seg"):
        registry.run("other", ct.folder)


def test_a_tampered_package_is_refused(tmp_path: Path, seg_package: Path) -> None:
    copy = tmp_path / "tampered"
    copy.mkdir()
    for path in seg_package.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(PackageIntegrityError):
        ModelRegistry({"seg": copy}).identity("seg")


def test_the_onnx_backend_gives_the_torch_labels_and_picks_pickled_settings_up(
    tmp_path: Path, seg_package: Path
) -> None:
    """[workers] backend = "onnxruntime": the package's model.onnx, the same label map, the same identity."""
    from vesalius.deploy.onnx import export_onnx

    exported = tmp_path / "seg"
    shutil.copytree(seg_package, exported)
    export_onnx(exported, exporters=("torchscript",))
    ct = write_ct(tmp_path, generate_uid())
    torch_result = ModelRegistry({"seg": exported}).run("seg", ct.folder)
    registry = pickle.loads(pickle.dumps(ModelRegistry({"seg": exported}, backend="onnxruntime")))
    onnx_result = registry.run("seg", ct.folder)
    assert isinstance(torch_result, SegmentationResult)
    assert isinstance(onnx_result, SegmentationResult)
    assert registry.backend == "onnxruntime"
    assert np.array_equal(onnx_result.labels.array, torch_result.labels.array)
    assert onnx_result.labels.identity == torch_result.labels.identity
    with pytest.raises(InputError, match=r"model\.int8\.onnx"):
        ModelRegistry({"seg": exported}, backend="onnxruntime-int8").run("seg", ct.folder)
    with pytest.raises(InputError, match="backend must be"):
        ModelRegistry({"seg": exported}, backend="tensorrt")
