"""The model package: a folder that round-trips a network exactly, never unpickles, and detects any edit."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.networks.nets import BasicUNet

from vesalius.core.errors import PackageError, PackageIntegrityError, UnsafePackageError
from vesalius.engines.common.package import (
    MANIFEST,
    WEIGHTS,
    PackageManifest,
    as_stored,
    load_package,
    resave_package,
    save_package,
    verify_package,
)

LABELS = {0: "background", 1: "liver", 2: "tumour"}


def small_unet() -> BasicUNet:
    """A real MONAI network with float weights and int64 BatchNorm buffers, small enough to run in milliseconds."""
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 8, 8, 16, 4), norm="batch")


def package_args(**overrides: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    args: dict[str, Any] = {
        "name": "liver-ct",
        "version": "1.2.0",
        "task": "segmentation",
        "labels": LABELS,
        "plan": {"patch_size": [32, 32], "spacing": [1.5, 1.5], "network": "BasicUNet"},
        "metrics": {"dice": {"liver": 0.95, "tumour": 0.71}},
        "data_fingerprint": {"cases": 12, "median_spacing": [1.5, 1.5, 3.0]},
        "state_dict": small_unet().state_dict(),
    }
    return args | overrides


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    source = tmp_path / "exported.onnx"
    source.write_bytes(b"not really onnx, but bytes to hash")
    return source


@pytest.fixture
def package(tmp_path: Path, onnx_file: Path) -> Path:
    return save_package(tmp_path / "pkg", **package_args(extra_files={"model.onnx": onnx_file}))


def edit_manifest(folder: Path, **changes: Any) -> None:
    data = json.loads((folder / MANIFEST).read_text())
    data.update(changes)
    (folder / MANIFEST).write_text(json.dumps(data, indent=2))


# --- round trip -------------------------------------------------------------------------------------------


def test_a_monai_network_round_trips_bit_exactly_and_predicts_the_same(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = small_unet()
    x = torch.randn(2, 1, 32, 32)
    trained(x)  # a training-mode pass moves the BatchNorm running statistics away from their defaults
    trained.eval()
    save_package(tmp_path / "pkg", **package_args(state_dict=trained.state_dict()))

    weights = load_package(tmp_path / "pkg").state_dict()
    original = trained.state_dict()
    assert weights.keys() == original.keys()
    for key, tensor in original.items():
        assert weights[key].dtype == tensor.dtype, key
        assert torch.equal(weights[key], tensor), key
    fresh = small_unet()
    fresh.load_state_dict(weights)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


def test_half_precision_weights_halve_the_file_and_load_into_a_float32_network(tmp_path: Path) -> None:
    state = package_args()["state_dict"]
    full = save_package(tmp_path / "full", **package_args())
    half = save_package(tmp_path / "half", **package_args(weights_dtype=torch.float16, postprocessing={"a": [1]}))
    ratio = (half / WEIGHTS).stat().st_size / (full / WEIGHTS).stat().st_size
    assert 0.45 < ratio < 0.65  # the JSON header does not halve
    loaded = load_package(half)
    assert loaded.manifest.postprocessing == {"a": [1]}
    weights = loaded.state_dict()
    assert weights["final_conv.weight"].dtype == torch.float16
    assert weights["conv_0.conv_0.adn.N.num_batches_tracked"].dtype == torch.int64  # integers stay integers
    network = small_unet()
    network.load_state_dict(weights)
    assert network.final_conv.weight.dtype == torch.float32
    torch.testing.assert_close(
        network.state_dict()["final_conv.weight"], state["final_conv.weight"], atol=1e-3, rtol=1e-3
    )
    stored = as_stored(state, torch.float16)  # what a trainer scores: exactly what the loaded network holds
    assert not torch.equal(stored["final_conv.weight"], state["final_conv.weight"])
    for name, value in network.state_dict().items():
        assert torch.equal(value, stored[name]), name


def test_manifest_keeps_what_was_saved_and_lists_every_file(package: Path) -> None:
    manifest = load_package(package).manifest
    assert (manifest.name, manifest.version, manifest.task) == ("liver-ct", "1.2.0", "segmentation")
    assert manifest.plan["patch_size"] == [32, 32]
    assert manifest.metrics["dice"]["tumour"] == 0.71
    assert manifest.data_fingerprint["cases"] == 12
    assert sorted(manifest.files) == ["model.onnx", WEIGHTS]
    assert all(digest.startswith("sha256:") for digest in manifest.files.values())
    assert manifest.created.tzinfo is not None


def test_labels_keep_int_keys_through_json(package: Path) -> None:
    assert '"1": "liver"' in (package / MANIFEST).read_text()
    assert load_package(package).manifest.labels == LABELS


def test_extra_files_are_copied_and_reachable_by_name(package: Path, onnx_file: Path) -> None:
    loaded = load_package(package)
    assert loaded.path("model.onnx").read_bytes() == onnx_file.read_bytes()
    with pytest.raises(PackageError, match=re.escape("lists no file 'notes.txt'")):
        loaded.path("notes.txt")


def test_aliased_and_non_contiguous_tensors_are_saved_as_independent_copies(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tied = {"encoder.weight": base, "decoder.weight": base, "row": base[1], "transposed": base.t()}
    save_package(tmp_path / "pkg", **package_args(state_dict=tied))
    loaded = load_package(tmp_path / "pkg").state_dict()
    for key, tensor in tied.items():
        assert torch.equal(loaded[key], tensor), key


def test_saving_the_same_inputs_twice_gives_the_same_bytes_and_hashes(tmp_path: Path, onnx_file: Path) -> None:
    first = save_package(tmp_path / "a", **package_args(extra_files={"model.onnx": onnx_file}))
    second = save_package(tmp_path / "b", **package_args(extra_files={"model.onnx": onnx_file}))
    assert (first / WEIGHTS).read_bytes() == (second / WEIGHTS).read_bytes()
    assert load_package(first).manifest.files == load_package(second).manifest.files


def test_weights_are_as_readable_as_package_json(package: Path) -> None:
    """safetensors alone writes 0600, which would lock a service account out of a model trained by another user."""
    assert (package / WEIGHTS).stat().st_mode == (package / MANIFEST).stat().st_mode


# --- refusals when saving -----------------------------------------------------------------------------------


def test_a_non_empty_folder_is_not_overwritten_unless_asked(package: Path) -> None:
    with pytest.raises(PackageError, match="not empty"):
        save_package(package, **package_args(version="1.3.0"))
    save_package(package, **package_args(version="1.3.0"), overwrite=True)
    assert load_package(package).manifest.version == "1.3.0"


@pytest.mark.parametrize("name", ["../escape.onnx", "sub/model.onnx", ".hidden", "model.pt", MANIFEST, WEIGHTS])
def test_extra_files_must_be_plain_non_pickle_unreserved_names(tmp_path: Path, onnx_file: Path, name: str) -> None:
    with pytest.raises(PackageError, match="extra file"):
        save_package(tmp_path / "pkg", **package_args(extra_files={name: onnx_file}))


@pytest.mark.parametrize(
    ("field", "value"), [("version", "v1"), ("task", "regression"), ("labels", {0: "a", 1: "a"}), ("name", "")]
)
def test_an_invalid_manifest_is_refused_naming_the_field(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(PackageError, match=f"{field}: "):
        save_package(tmp_path / "pkg", **package_args(**{field: value}))
    assert not (tmp_path / "pkg").exists(), "a refused package must leave nothing behind"


# --- tamper detection ---------------------------------------------------------------------------------------


def test_intact_package_has_no_problems(package: Path) -> None:
    assert verify_package(package) == []


def test_a_flipped_byte_in_the_weights_is_caught_naming_the_file(package: Path) -> None:
    weights = package / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageIntegrityError, match=rf"{WEIGHTS} changed: expected sha256:[0-9a-f]+, found sha256:"):
        load_package(package)


def test_an_edited_plan_in_package_json_is_caught(package: Path) -> None:
    data = json.loads((package / MANIFEST).read_text())
    edit_manifest(package, plan=data["plan"] | {"patch_size": [64, 64]})
    with pytest.raises(PackageIntegrityError, match="manifest_sha256"):
        load_package(package)


def test_re_indenting_package_json_is_not_an_edit(package: Path) -> None:
    edit_manifest(package)  # same content, different whitespace
    assert verify_package(package) == []


def test_an_edited_label_is_caught(package: Path) -> None:
    edit_manifest(package, labels={"0": "background", "1": "spleen", "2": "tumour"})
    assert any("manifest_sha256" in problem for problem in verify_package(package))


def test_a_deleted_extra_file_is_caught_naming_it(package: Path) -> None:
    (package / "model.onnx").unlink()
    with pytest.raises(PackageIntegrityError, match=re.escape("model.onnx is missing")):
        load_package(package)


def test_verify_false_loads_a_tampered_package_for_forensics_only(package: Path) -> None:
    edit_manifest(package, metrics={"dice": {"liver": 0.99}})
    with pytest.raises(PackageIntegrityError):
        load_package(package)
    assert load_package(package, verify=False).manifest.metrics == {"dice": {"liver": 0.99}}


# --- what is never loaded -----------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this would run code; the test proves the loader never gets that far."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, ("raise SystemExit('unpickled!')",))


def test_a_pickled_checkpoint_instead_of_safetensors_is_refused(package: Path) -> None:
    (package / WEIGHTS).unlink()
    (package / "model.pt").write_bytes(pickle.dumps(_Exploit()))
    for verify in (True, False):
        with pytest.raises(UnsafePackageError, match=re.escape("model.pt holds pickled weights, which are not loaded")):
            load_package(package, verify=verify)
    assert "pickled weights" in verify_package(package)[0]


def test_a_folder_without_package_json_is_not_a_package(tmp_path: Path) -> None:
    (tmp_path / WEIGHTS).write_bytes(b"")
    with pytest.raises(PackageError, match=f"no {MANIFEST}"):
        load_package(tmp_path)


def test_a_newer_schema_version_is_refused_with_the_version_named(package: Path) -> None:
    edit_manifest(package, schema_version=2)
    with pytest.raises(PackageError, match="schema_version 2 is not supported"):
        load_package(package)


def test_an_unknown_field_in_package_json_is_refused_by_name(package: Path) -> None:
    edit_manifest(package, licence="MIT")
    with pytest.raises(PackageError, match="licence: Extra inputs are not permitted"):
        load_package(package, verify=False)


def test_a_listed_file_outside_the_folder_is_refused(package: Path) -> None:
    data = json.loads((package / MANIFEST).read_text())
    edit_manifest(package, files=data["files"] | {"../../etc/passwd": "sha256:" + "0" * 64})
    with pytest.raises(PackageError, match=re.escape("'../../etc/passwd' must be a plain name")):
        load_package(package, verify=False)


def test_a_manifest_without_weights_listed_is_invalid() -> None:
    with pytest.raises(ValueError, match=WEIGHTS):
        PackageManifest.model_validate(
            {
                "name": "x",
                "version": "0.1.0",
                "task": "classification",
                "labels": {"0": "normal", "1": "pneumonia"},
                "plan": {},
                "metrics": {},
                "data_fingerprint": {},
                "created": "2025-01-01T00:00:00Z",
                "vesalius_version": "0.1.0",
                "files": {"model.onnx": "sha256:" + "0" * 64},
                "manifest_sha256": "sha256:" + "0" * 64,
            }
        )


def test_resaving_changes_only_the_fields_asked_and_keeps_files_only_with_the_same_weights(
    package: Path, tmp_path: Path
) -> None:
    before = load_package(package).manifest
    weights = (package / WEIGHTS).read_bytes()
    resave_package(load_package(package), postprocessing={"keep_largest_component": [1]})
    after = load_package(package).manifest
    assert after.postprocessing == {"keep_largest_component": [1]}
    assert (after.plan, after.metrics, after.labels) == (before.plan, before.metrics, before.labels)
    assert after.files == before.files  # the weights keep their bytes, the ONNX graph stays
    assert (package / WEIGHTS).read_bytes() == weights
    retrained = {k: v + 1 if v.is_floating_point() else v for k, v in load_package(package).state_dict().items()}
    copy = resave_package(load_package(package), tmp_path / "copy", state_dict=retrained, plan={"patch_size": [16, 16]})
    derived = load_package(copy).manifest
    assert set(derived.files) == {WEIGHTS}  # a graph of the old weights does not describe the new ones
    assert derived.plan == {"patch_size": [16, 16]}
    assert verify_package(copy) == []
    with pytest.raises(PackageError, match="cannot change"):
        resave_package(load_package(package), tmp_path / "bad", files={})
