"""The ONNX Runtime backend predicts what the torch engines predict, and runs where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.deploy.test_onnx import classification_package, segmentation_package
from tests.engines.segmentation.test_predict import oblique_volume
from vesalius.core.errors import InputError, PackageIntegrityError
from vesalius.deploy.onnx import ONNX_FILE, export_onnx
from vesalius.deploy.runtime import OnnxClassifier, OnnxSegmenter, main_probabilities
from vesalius.engines.classification.dataset import ImageSource
from vesalius.engines.classification.engine import Classifier
from vesalius.engines.classification.plan import TaskKind, make_classification_plan
from vesalius.engines.classification.trainer import main_probabilities as torch_probabilities
from vesalius.engines.common.package import load_package
from vesalius.engines.segmentation.predict import Predictor

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def classification_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = classification_package(tmp_path_factory.mktemp("cls") / "package", seed=1)
    export_onnx(folder, exporters=("torchscript",))  # the fast exporter; test_onnx covers the dynamo graph
    return folder


@pytest.fixture(scope="module")
def segmentation_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = segmentation_package(tmp_path_factory.mktemp("seg") / "package", seed=0)  # all three classes appear
    export_onnx(folder, exporters=("torchscript",))
    return folder


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> list[ImageSource]:
    """Grey and colour PNGs of other sizes than the plan's, so resizing and channel handling are exercised."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    sources = []
    for index, shape in enumerate([(40, 37), (29, 52), (33, 33, 3)]):
        path = folder / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        sources.append(ImageSource(path))
    return sources


def test_classifier_probabilities_and_labels_match_the_torch_classifier(
    classification_folder: Path, radiographs: list[ImageSource]
) -> None:
    onnx = OnnxClassifier(classification_folder, threads=1)
    reference = Classifier(classification_folder, device="cpu", precision="fp32")
    assert onnx.flip_axes() == (1,)  # TTA is on, and the temperature is not 1: both paths are exercised
    assert onnx.temperature == reference.temperature == 1.7
    found, expected = onnx.probabilities(radiographs), reference.probabilities(radiographs)
    assert found.shape == expected.shape == (3, 2)
    np.testing.assert_allclose(found, expected, atol=1e-4)
    assert [onnx.label(row) for row in found] == [reference.label(row) for row in expected]


@pytest.mark.parametrize("kind", ["multilabel", "ordinal"])
def test_numpy_probabilities_match_the_torch_ones_for_every_task_kind(kind: TaskKind) -> None:
    plan = make_classification_plan(
        dataset_name="kinds", kind=kind, class_names=["a", "b", "c", "d"], class_counts=[5] * 4,
        median_size=[32, 32], channels=1,
    )  # fmt: skip
    logits = np.random.default_rng(5).normal(0.0, 3.0, (6, plan.network.heads["main"]))
    np.testing.assert_allclose(main_probabilities(plan, logits), torch_probabilities(plan, logits), atol=1e-12)


def test_segmenter_labels_equal_the_predictor_on_exactly_the_input_grid(segmentation_folder: Path) -> None:
    volume = oblique_volume(seed=4)
    assert not np.allclose(volume.affine[:3, :3], np.diag(np.diag(volume.affine[:3, :3])))  # rotated grid
    onnx = OnnxSegmenter(segmentation_folder, threads=1)
    reference = Predictor(load_package(segmentation_folder), tta=True, precision="fp32")
    assert onnx.postprocessing == reference.postprocessing == {1: True}
    labels, expected = onnx.predict(volume), reference.predict(volume)
    assert labels.array.shape == volume.array.shape
    assert np.array_equal(labels.affine, volume.affine)
    assert labels.array.dtype == expected.array.dtype == np.uint8
    assert np.array_equal(labels.array, expected.array)
    assert len(np.unique(labels.array)) == 3  # a constant map would match trivially
    unprocessed = OnnxSegmenter(segmentation_folder, threads=1, postprocessing={}).predict(volume)
    assert (unprocessed.array == 1).sum() > (labels.array == 1).sum()  # the recorded post-processing acted
    probabilities = onnx.predict_probabilities(volume)
    assert probabilities.array.shape == (*volume.shape, 3)
    assert np.array_equal(probabilities.affine, volume.affine)
    np.testing.assert_allclose(probabilities.array, reference.predict_probabilities(volume).array, atol=1e-4)


def test_a_package_without_model_onnx_names_the_export_command(tmp_path: Path) -> None:
    folder = segmentation_package(tmp_path / "plain")
    with pytest.raises(InputError, match=r"no model\.onnx.*vesalius export .* --onnx"):
        OnnxSegmenter(folder)


def test_a_changed_graph_is_refused_and_a_task_mismatch_named(tmp_path: Path, classification_folder: Path) -> None:
    with pytest.raises(InputError, match="classification package, not a segmentation one"):
        OnnxSegmenter(classification_folder)
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in classification_folder.iterdir():
        copy.joinpath(file.name).write_bytes(file.read_bytes())
    graph = bytearray((copy / ONNX_FILE).read_bytes())
    graph[-1] ^= 0xFF
    (copy / ONNX_FILE).write_bytes(bytes(graph))
    with pytest.raises(PackageIntegrityError, match=f"{ONNX_FILE} changed"):
        OnnxClassifier(copy)


def test_the_runtime_predicts_with_torch_blocked(
    classification_folder: Path, segmentation_folder: Path, radiographs: list[ImageSource]
) -> None:
    """In a fresh interpreter where any import of torch (or MONAI) fails, both backends import and predict."""
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys
        from pathlib import Path
        import numpy as np

        class Blocked(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("torch", "monai"):
                    raise ImportError(f"{name} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocked())
        """
    )
    script += textwrap.dedent(
        f"""
        from vesalius.core.volume import Volume
        from vesalius.deploy.runtime import OnnxClassifier, OnnxSegmenter
        from vesalius.engines.classification.dataset import ImageSource
        from tests.engines.segmentation.test_preprocess import oblique_affine

        values = np.random.default_rng(4).normal(40.0, 60.0, (20, 18, 9)).astype(np.float32)
        volume = Volume(array=values, affine=oblique_affine(), modality="CT")
        labels = OnnxSegmenter({str(segmentation_folder)!r}, threads=1).predict(volume)
        sources = [ImageSource(Path(p)) for p in {[str(s.path) for s in radiographs]!r}]
        probabilities = OnnxClassifier({str(classification_folder)!r}, threads=1).probabilities(sources)
        print(json.dumps({{
            "torch": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai")),
            "labels": np.bincount(labels.array.ravel(), minlength=3).tolist(),
            "probabilities": probabilities.tolist(),
        }}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch"] == []
    expected_labels = OnnxSegmenter(segmentation_folder, threads=1).predict(oblique_volume(seed=4)).array
    assert result["labels"] == np.bincount(expected_labels.ravel(), minlength=3).tolist()
    expected = OnnxClassifier(classification_folder, threads=1).probabilities(radiographs)
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-6)
