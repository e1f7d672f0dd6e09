"""The study processor run directly (no queue): routing picks models per series, SEG/SR/FHIR/summary are written,
valid (dciodvfy, highdicom) and deterministic, unrouted series are skipped, and the processor pickles."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests import dicom_factory as factory
from tests.gateway.test_models import CXR_PACKAGE, write_ct, write_radiograph
from tests.writers.conftest import dciodvfy_errors
from vesalius.gateway.jobs import JobOutput, JobSpec
from vesalius.gateway.models import ModelRegistry
from vesalius.gateway.processor import ProcessingError, ProcessorSettings, StudyProcessor, find_series
from vesalius.gateway.routing import Routing

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROUTES = """
[[route]]
name = "CT volumes"
modality = "CT"
min_instances = 4
models = ["tiny-seg"]

[[route]]
name = "radiographs"
modality = "CR"
max_instances = 1
models = ["cxr"]
"""


@dataclass(frozen=True)
class Study:
    uid: str
    folder: Path
    ct: factory.WrittenSeries
    scout: factory.WrittenSeries
    radiograph: Path


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.engines.segmentation.test_predict import make_package

    folder = tmp_path_factory.mktemp("packages") / "tiny-seg"
    make_package(folder, seed=0)
    return {"tiny-seg": folder, "cxr": CXR_PACKAGE}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A CT volume (routed), a 2-slice CT scout (too few instances: unrouted) and a chest radiograph (routed)."""
    root, uid = tmp_path_factory.mktemp("store"), generate_uid()
    ct = write_ct(root, uid)
    scout = write_ct(root, uid, slices=2, seed=2)
    return Study(uid, root / uid, ct, scout, write_radiograph(root, uid))


@pytest.fixture(scope="module")
def processor(packages: dict[str, Path]) -> StudyProcessor:
    return StudyProcessor(ModelRegistry(packages), Routing.from_toml(ROUTES), ProcessorSettings())


def spec_for(study: Study, job_id: str = "job-1", models: list[str] | None = None) -> JobSpec:
    """A job as the listener submits it: the models routed over the whole study."""
    return JobSpec(
        job_id=job_id,
        kind="dicom-study",
        study_instance_uid=study.uid,
        input_folder=study.folder,
        models=["cxr", "tiny-seg"] if models is None else models,
        requester="TESTSCU",
    )


@pytest.fixture(scope="module")
def first_run(
    processor: StudyProcessor, study: Study, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, JobOutput]:
    out = tmp_path_factory.mktemp("out")
    return out, processor(spec_for(study), out)


def test_series_are_found_and_summarised_from_the_stored_study(study: Study) -> None:
    found = {s.info.series_uid: s.info for s in find_series(study.folder)}
    assert set(found) == {
        study.ct.series_uid,
        study.scout.series_uid,
        pydicom.dcmread(study.radiograph).SeriesInstanceUID,
    }
    ct = found[study.ct.series_uid]
    assert (ct.modality, ct.body_part, ct.instance_count, ct.rows, ct.columns) == ("CT", "CHEST", 6, 20, 24)
    assert ct.folder == study.ct.folder


def test_a_study_gives_seg_and_sr_per_result_one_fhir_bundle_and_a_summary(
    first_run: tuple[Path, JobOutput], study: Study
) -> None:
    out, output = first_run
    kinds = sorted(f.kind for f in output.files)
    assert kinds == ["fhir", "report", "seg", "sr", "sr"]
    for item in output.files:
        assert (out / item.name).is_file()
        assert not Path(item.name).is_absolute()
    assert sorted(output.output_uids) == sorted(f.sop_instance_uid for f in output.files if f.sop_instance_uid)
    assert sorted(m.name for m in output.models) == ["cxr-pneumonia", "tiny"]
    assert len(output.input_series_uids) == 3
    assert output.input_instance_count == 6 + 2 + 1

    seg_file = next(out / f.name for f in output.files if f.kind == "seg")
    assert dciodvfy_errors(seg_file) == []
    seg = hd.seg.segread(seg_file)
    assert seg.StudyInstanceUID == study.uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.ct.series_uid
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= set(study.ct.sop_instance_uids)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["class1", "class2"]

    for sr_file in (out / f.name for f in output.files if f.kind == "sr"):
        assert dciodvfy_errors(sr_file) == []
        sr = hd.sr.srread(sr_file)
        assert sr.StudyInstanceUID == study.uid
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR

    bundle = json.loads((out / "fhir" / "DiagnosticReport.json").read_text(encoding="utf-8"))
    report = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert "+00:00" in report["issued"] or report["issued"].endswith("Z")


def test_the_summary_lists_findings_and_skipped_series_without_patient_data(
    first_run: tuple[Path, JobOutput], study: Study
) -> None:
    out, output = first_run
    text = (out / "summary.json").read_text(encoding="utf-8")
    summary = json.loads(text)
    assert summary == output.summary
    by_uid = {entry["series_instance_uid"]: entry for entry in summary["series"]}
    assert by_uid[study.scout.series_uid]["skipped"] == "no model routed to this series"
    ct_models = by_uid[study.ct.series_uid]["models"]
    assert [m["name"] for m in ct_models] == ["tiny-seg"]
    assert set(ct_models[0]["findings"]["volumes_ml"]) == {"class1", "class2"}
    cr = by_uid[pydicom.dcmread(study.radiograph).SeriesInstanceUID]["models"][0]
    assert cr["name"] == "cxr"
    assert cr["findings"]["class"] in ("NORMAL", "PNEUMONIA")
    assert 0.0 <= cr["findings"]["probability"] <= 1.0
    per_model = [m["compute_seconds"] for e in summary["series"] for m in e.get("models", [])]
    assert all(seconds > 0 for seconds in per_model)
    assert summary["compute_seconds"] == pytest.approx(sum(per_model), abs=1e-3)
    for phi in ("Phantom", "Vesalius^Phantom", "VES-0001", "VES-CR-1", "19700101", "ACC000"):
        assert phi not in text


def test_the_same_job_run_again_writes_the_same_instances(
    first_run: tuple[Path, JobOutput], processor: StudyProcessor, study: Study, tmp_path: Path
) -> None:
    _, output = first_run
    again = processor(spec_for(study, job_id="job-2"), tmp_path)
    assert sorted(again.output_uids) == sorted(output.output_uids)
    assert sorted(f.name for f in again.files) == sorted(f.name for f in output.files)


def test_the_jobs_own_models_override_the_routing(processor: StudyProcessor, tmp_path: Path) -> None:
    uid = generate_uid()
    scout = write_ct(tmp_path / "store", uid, slices=2)  # no rule routes a 2-slice CT; the job names the model
    output = processor(
        JobSpec(job_id="j", kind="files", input_folder=tmp_path / "store", models=["tiny-seg"], requester="api"),
        tmp_path / "out",
    )
    assert sorted(f.kind for f in output.files) == ["fhir", "report", "seg", "sr"]
    assert output.input_series_uids == [scout.series_uid]


def test_a_listener_job_is_routed_per_series_within_its_models(
    processor: StudyProcessor, study: Study, tmp_path: Path
) -> None:
    radiograph_series = pydicom.dcmread(study.radiograph).SeriesInstanceUID
    only_cxr = processor(spec_for(study, models=["cxr"]), tmp_path / "cxr")
    ran = {e["series_instance_uid"]: [m["name"] for m in e.get("models", [])] for e in only_cxr.summary["series"]}
    assert ran == {study.ct.series_uid: [], study.scout.series_uid: [], radiograph_series: ["cxr"]}
    routed = processor(spec_for(study, models=[]), tmp_path / "routed")
    assert sorted(f.kind for f in routed.files) == ["fhir", "report", "seg", "sr", "sr"]


def test_a_study_no_model_wants_is_skipped_without_results(packages: dict[str, Path], tmp_path: Path) -> None:
    write_ct(tmp_path / "store", generate_uid(), slices=2)
    processor = StudyProcessor(ModelRegistry(packages), Routing.from_toml(ROUTES))
    output = processor(JobSpec(job_id="j", kind="files", input_folder=tmp_path / "store", requester="api"), tmp_path)
    assert [f.kind for f in output.files] == ["report"]
    assert output.summary["results"] == 0
    assert "skipped" in output.summary["series"][0]


def test_a_failing_model_names_the_series_and_no_patient_data(processor: StudyProcessor, study: Study) -> None:
    spec = JobSpec(job_id="j", kind="files", input_folder=study.folder, models=["cxr"], requester="api")
    # an upload naming a 2-D classifier runs it on every series, the CT volumes too
    with pytest.raises(ProcessingError) as caught:
        processor(spec, study.folder.parent / "failed-out")
    message = str(caught.value)
    assert study.ct.series_uid in message or study.scout.series_uid in message
    assert "'cxr'" in message
    assert "Phantom" not in message
    assert "VES-0001" not in message


def test_the_processor_pickles_for_spawned_workers(
    processor: StudyProcessor, first_run: tuple[Path, JobOutput]
) -> None:
    data = pickle.dumps(processor)  # after a run: loaded engines are left out
    assert len(data) < 20_000
    copy = pickle.loads(data)
    assert isinstance(copy, StudyProcessor)
    assert copy.routing is not None
    assert [r.name for r in copy.routing.rules] == ["CT volumes", "radiographs"]
    assert copy.registry.packages == processor.registry.packages
