"""DICOM series to voxels: Vesalius against SimpleITK's ImageSeriesReader and dcm2niix, side by side in one run.

Loads ``lidc/LIDC-IDRI-0001`` (one CT series, 133 slices) and the five MR series of ``dicom/brain-mr-study1``
from the shared data folder with each tool:

* ``vesalius``: ``read_volume(folder)`` for the single series, ``scan`` + ``volume_from_series`` for every series
  of the study;
* ``vesalius+nifti``: the same load, then ``write_nifti`` of every series to an uncompressed ``.nii`` (the fair
  match for dcm2niix, which writes files);
* ``simpleitk``: the usual idiom, ``GetGDCMSeriesIDs`` + ``GetGDCMSeriesFileNames`` + ``Execute`` per series of
  every folder;
* ``dcm2niix``: ``dcm2niix -z n -o TMP FOLDER`` (uncompressed NIfTI plus its default JSON sidecars).

Every timed trial is a fresh process, so that peak memory is that trial's own. A Python tool times itself with
``time.perf_counter`` around the load, after its imports, and reports its peak RSS (``ru_maxrss``) both whole and
over the baseline taken after the imports; dcm2niix is timed as a whole process, and its peak RSS comes from
``os.wait4``. One untimed run of each tool warms the OS file cache first; the median of ``--runs`` trials is
reported. The same run checks that Vesalius gives the voxels and affines of SimpleITK and of dcm2niix.

Run from the repository root: ``.venv/bin/python benchmarks/io_series_load.py [--runs 5] [--data PATH]``.
It prints a table, writes ``benchmarks/results/io_series_load.json`` (every trial) and updates its own section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from _common import DOCS_MD, REPO, machine, update_docs

if TYPE_CHECKING:
    import SimpleITK as sitk

    from vesalius.core.volume import Volume

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS_JSON = REPO / "benchmarks" / "results" / "io_series_load.json"
MARK_START = "<!-- io_series_load:start -->"
MARK_END = "<!-- io_series_load:end -->"
AFFINE_TOLERANCE_MM = 1e-3
SPEEDUP_GOAL = 1.5

VESALIUS = "vesalius"
VESALIUS_NIFTI = "vesalius+nifti"
SIMPLEITK = "simpleitk"
DCM2NIIX = "dcm2niix"
TOOLS = (VESALIUS, VESALIUS_NIFTI, SIMPLEITK, DCM2NIIX)
PYTHON_TOOLS = (VESALIUS, VESALIUS_NIFTI, SIMPLEITK)
LABELS = {
    VESALIUS: "Vesalius load",
    VESALIUS_NIFTI: "Vesalius load + write .nii",
    SIMPLEITK: "SimpleITK ImageSeriesReader",
    DCM2NIIX: "dcm2niix -z n",
}

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str
    """Relative to the data root."""
    series: int
    """How many series the folder holds; more than one is read with scan + volume_from_series."""


DATASETS = (
    Dataset("LIDC-IDRI-0001 CT", "lidc/LIDC-IDRI-0001", 1),
    Dataset("brain-mr-study1", "dicom/brain-mr-study1", 5),
)


@dataclass
class Trial:
    tool: str
    dataset: str
    warmup: bool
    seconds: float
    """The load alone for a Python tool (imports excluded); the whole process for dcm2niix."""
    process_seconds: float
    """The whole child process: interpreter start and imports included for a Python tool."""
    cpu_seconds: float
    """User + system CPU time of what ``seconds`` measures (all threads); less sensitive to other load."""
    peak_rss_mb: float
    """ru_maxrss of the child process."""
    load_peak_mb: float
    """Peak RSS over the baseline taken after the imports; the whole process for dcm2niix."""
    voxels: int
    series: int


@dataclass
class SeriesCheck:
    dataset: str
    series_instance_uid: str
    series_number: int | None
    description: str
    shape: list[int]
    vesalius_dtype: str
    simpleitk_dtype: str | None = None
    simpleitk_voxels_identical: bool | None = None
    simpleitk_max_voxel_diff: float | None = None
    simpleitk_differing_voxels: int | None = None
    simpleitk_affine_diff_mm: float | None = None
    dcm2niix_file: str | None = None
    dcm2niix_matched_by: str | None = None
    dcm2niix_stored: str | None = None
    dcm2niix_voxels_identical: bool | None = None
    dcm2niix_max_voxel_diff: float | None = None
    dcm2niix_differing_voxels: int | None = None
    dcm2niix_affine_diff_mm: float | None = None
    nifti_roundtrip_identical: bool | None = None
    nifti_roundtrip_affine_diff_mm: float | None = None
    notes: list[str] = field(default_factory=list)

    def simpleitk_ok(self) -> bool:
        return bool(self.simpleitk_voxels_identical) and _within(self.simpleitk_affine_diff_mm)

    def dcm2niix_ok(self) -> bool:
        return bool(self.dcm2niix_voxels_identical) and _within(self.dcm2niix_affine_diff_mm)

    def roundtrip_ok(self) -> bool:
        return bool(self.nifti_roundtrip_identical) and _within(self.nifti_roundtrip_affine_diff_mm)


def _within(diff: float | None) -> bool:
    return diff is not None and diff <= AFFINE_TOLERANCE_MM


# --- the loads under test (shared by the timed workers and the correctness check) -------------------------------


def load_vesalius(folder: Path, multi: bool) -> list[Volume]:
    from vesalius.io import read_volume
    from vesalius.io.dicom import scan, volume_from_series

    if not multi:
        return [read_volume(folder)]
    return [volume_from_series(series) for series in scan(folder).series]


def write_vesalius(volumes: Sequence[Volume], out: Path) -> list[Path]:
    from vesalius.io import write_nifti

    return [write_nifti(v, out / f"{n:02d}_{v.identity.series_instance_uid}.nii") for n, v in enumerate(volumes)]


def load_simpleitk(folder: Path) -> list[tuple[str, sitk.Image]]:
    import SimpleITK as sitk

    images: list[tuple[str, sitk.Image]] = []
    for directory, subdirs, _ in os.walk(folder):
        subdirs.sort()
        for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, series_id))
            images.append((series_id, reader.Execute()))
    return images


# --- worker: one timed trial in a fresh process ----------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (its own address space since exec), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def worker(tool: str, folder: Path, multi: bool, out: Path, report: Path) -> None:
    if tool == SIMPLEITK:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # "No Series were found" for the study's top folder
    else:
        import vesalius.io
        import vesalius.io.dicom  # noqa: F401
    gc.collect()
    baseline = _peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    if tool == SIMPLEITK:
        images = load_simpleitk(folder)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        shapes = [tuple(image.GetSize()) for _, image in images]
    else:
        volumes = load_vesalius(folder, multi)
        if tool == VESALIUS_NIFTI:
            write_vesalius(volumes, out)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        shapes = [tuple(v.array.shape) for v in volumes]
    peak = _peak_rss_mb()
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "voxels": int(sum(np.prod(s, dtype=np.int64) for s in shapes)),
        "series": len(shapes),
    }
    report.write_text(json.dumps(result))


# --- parent: trials ----------------------------------------------------------------------------------------------


def find_dcm2niix() -> str:
    beside = Path(sys.executable).parent / "dcm2niix"
    found = str(beside) if beside.is_file() else shutil.which("dcm2niix")
    if not found:
        raise SystemExit("io_series_load: no dcm2niix executable (pip install dcm2niix into the venv)")
    return found


def nifti_voxels(folder: Path) -> tuple[int, int]:
    import nibabel as nib

    files = sorted(folder.glob("*.nii"))
    voxels = 0
    for file in files:
        image: Any = nib.load(file)
        voxels += int(np.prod(image.shape, dtype=np.int64))
    return voxels, len(files)


# A child's ru_maxrss starts from the RSS of the process that forked it (Linux copies the high-water mark of the
# forking mm at exec), so trials are forked from this minimal launcher (python -I -S, about 10 MB) rather than from
# the benchmark process, which holds hundreds of MB after the correctness check.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as sink:
    cpu = usage.ru_utime + usage.ru_stime
    outcome = {"status": os.waitstatus_to_exitcode(status), "wall": wall, "cpu": cpu, "maxrss_kb": usage.ru_maxrss}
    json.dump(outcome, sink)
"""


def _spawn(command: list[str], log: Path) -> tuple[float, float, float]:
    """Run to completion from the launcher; wall seconds, CPU seconds and the child's peak RSS (ru_maxrss) in MB."""
    result = log.with_suffix(".spawn.json")
    with log.open("wb") as sink:
        subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), *command], stdout=sink, check=False)
    outcome: dict[str, Any] = json.loads(result.read_text()) if result.is_file() else {"status": "launcher failed"}
    result.unlink(missing_ok=True)
    if outcome["status"] != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"io_series_load: {shlex.join(command)} exited with {outcome['status']}:\n{tail}")
    return float(outcome["wall"]), float(outcome["cpu"]), outcome["maxrss_kb"] / 1024


def run_trial(tool: str, dataset: Dataset, folder: Path, dcm2niix: str, workdir: Path, warmup: bool) -> Trial:
    out = Path(tempfile.mkdtemp(prefix="out-", dir=workdir))
    report = workdir / "report.json"
    report.unlink(missing_ok=True)
    if tool == DCM2NIIX:
        command = [dcm2niix, "-z", "n", "-o", str(out), str(folder)]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, "--folder", str(folder)]
        command += ["--out", str(out), "--report", str(report)] + (["--multi"] if dataset.series > 1 else [])
    wall, cpu, peak = _spawn(command, workdir / "log.txt")
    if tool == DCM2NIIX:
        voxels, series = nifti_voxels(out)
        trial = Trial(tool, dataset.name, warmup, wall, wall, cpu, peak, peak, voxels, series)
    else:
        result = json.loads(report.read_text())
        load_peak = result["peak_mb"] - result["baseline_mb"]
        seconds, load_cpu, voxels = result["seconds"], result["cpu_seconds"], result["voxels"]
        trial = Trial(
            tool, dataset.name, warmup, seconds, wall, load_cpu, peak, load_peak, voxels, int(result["series"])
        )
    shutil.rmtree(out)
    os.sync()  # no write-back of this trial's files during the next one
    return trial


def _busy_cpu_seconds() -> float:
    """CPU time spent by the whole machine since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7))
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Contention:
    """How busy the machine was with other work while the trials ran (the timings assume it was idle)."""

    wall_seconds: float = 0.0
    other_cpu_seconds: float = 0.0
    """CPU time of processes that are not this benchmark or its children."""
    load_average_before: float = 0.0
    load_average_after: float = 0.0

    @property
    def other_cores(self) -> float:
        return self.other_cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


def wait_for_idle(limit_seconds: float, window: float = 2.0, threshold: float = 0.2) -> None:
    """Wait (up to ``limit_seconds``) until other processes use under ``threshold`` cores over ``window`` s."""
    deadline = time.monotonic() + limit_seconds
    while True:
        busy = _busy_cpu_seconds()
        time.sleep(window)
        cores = (_busy_cpu_seconds() - busy) / window
        if cores < threshold:
            return
        if time.monotonic() >= deadline:
            print(f"  the machine is still busy ({cores:.2f} cores in use by others); timing anyway", flush=True)
            return
        print(f"  waiting for an idle machine ({cores:.2f} cores in use by others) ...", flush=True)


def run_trials(data: Path, runs: int, dcm2niix: str, contention: Contention) -> list[Trial]:
    trials: list[Trial] = []
    contention.load_average_before = os.getloadavg()[0]
    start, busy, own = time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="io_series_load-") as tmp:
        workdir = Path(tmp)
        for dataset in DATASETS:
            for tool in TOOLS:
                trials.append(run_trial(tool, dataset, data / dataset.folder, dcm2niix, workdir, warmup=True))
        for run in range(runs):
            order = TOOLS[run % len(TOOLS) :] + TOOLS[: run % len(TOOLS)]  # no tool always first or last
            for dataset in DATASETS:
                for tool in order:
                    trial = run_trial(tool, dataset, data / dataset.folder, dcm2niix, workdir, warmup=False)
                    trials.append(trial)
                    print(f"  run {run + 1}/{runs} {dataset.name:<18} {tool:<15} {trial.seconds:7.3f} s", flush=True)
    contention.wall_seconds = time.perf_counter() - start
    others = (_busy_cpu_seconds() - busy) - (_own_cpu_seconds() - own)
    contention.other_cpu_seconds = max(0.0, others)
    contention.load_average_after = os.getloadavg()[0]
    return trials


# --- correctness ---------------------------------------------------------------------------------------------------


def compare_voxels(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> tuple[bool, float, int]:
    """Identical after casting both to a common dtype; else the largest difference and how many voxels differ."""
    if a.shape != b.shape:
        return False, float("inf"), -1
    common = np.result_type(a.dtype, b.dtype)
    if np.array_equal(a.astype(common, copy=False), b.astype(common, copy=False)):
        return True, 0.0, 0
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return False, float(diff.max()), int(np.count_nonzero(diff))


def max_diff(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def simpleitk_affine(image: sitk.Image) -> FloatArray:
    """Index (i, j, k) to LPS mm: direction times spacing, then the origin."""
    affine = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    affine[:3, 3] = image.GetOrigin()
    return affine


def canonical(array: npt.NDArray[Any], ras_affine: FloatArray) -> tuple[npt.NDArray[Any], FloatArray]:
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(array, ras_affine))
    return np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


@dataclass
class NiftiOutput:
    name: str
    data: npt.NDArray[Any]
    """Scaled (scl_slope, scl_inter applied), in closest-canonical (RAS+) axis order."""
    affine: FloatArray
    stored: str
    series_number: int | None
    used: bool = False


def read_dcm2niix_outputs(folder: Path) -> list[NiftiOutput]:
    import nibabel as nib

    outputs = []
    for path in sorted(folder.glob("*.nii")):
        image: Any = nib.load(path)
        slope, inter = image.header.get_slope_inter()
        scaling = "no scaling" if slope is None and inter is None else f"scl_slope {slope}, scl_inter {inter}"
        stored = f"{image.get_data_dtype()}, {scaling}"
        data, affine = canonical(np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=np.float64))
        sidecar = path.with_suffix(".json")
        number = json.loads(sidecar.read_text()).get("SeriesNumber") if sidecar.is_file() else None
        outputs.append(NiftiOutput(path.name, data, affine, stored, int(number) if number is not None else None))
    return outputs


def match_output(
    shape: tuple[int, ...], affine: FloatArray, series_number: int | None, outputs: list[NiftiOutput]
) -> tuple[NiftiOutput | None, str]:
    """The dcm2niix output with this (canonical) shape and the closest affine; the JSON sidecar's SeriesNumber
    decides between outputs of the same grid (registered series share one)."""
    candidates = [o for o in outputs if o.data.shape == shape and not o.used]
    if not candidates:
        return None, "no unused dcm2niix output of this shape"
    best = min(max_diff(o.affine, affine) for o in candidates)
    close = [o for o in candidates if max_diff(o.affine, affine) <= best + AFFINE_TOLERANCE_MM]
    if len(close) == 1:
        return close[0], "shape + affine"
    numbered = [o for o in close if o.series_number == series_number]
    if len(numbered) == 1:
        return numbered[0], f"shape + affine ({len(close)} share the grid), then SeriesNumber in the JSON sidecar"
    return close[0], f"ambiguous: {len(close)} outputs share shape and affine, first taken"


def check_simpleitk(check: SeriesCheck, volume: Volume, images: dict[str, sitk.Image]) -> None:
    import SimpleITK as sitk

    image = images.pop(check.series_instance_uid, None)
    if image is None:
        check.notes.append("SimpleITK returned no series with this UID")
        return
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    affine = simpleitk_affine(image)
    check.simpleitk_dtype = str(array.dtype)
    identical, worst, count = compare_voxels(volume.array, array)
    check.simpleitk_voxels_identical, check.simpleitk_max_voxel_diff = identical, worst
    check.simpleitk_differing_voxels = count
    check.simpleitk_affine_diff_mm = max_diff(volume.affine, affine)
    if not identical or not _within(check.simpleitk_affine_diff_mm):
        ras = np.diag([-1.0, -1.0, 1.0, 1.0])
        mine, mine_affine = canonical(volume.array, volume.ras_affine)
        theirs, their_affine = canonical(array, ras @ affine)
        same, _, _ = compare_voxels(mine, theirs)
        check.notes.append(
            f"SimpleITK: shape {array.shape} vs {volume.array.shape}; after reorienting both to RAS, voxels "
            f"identical={same}, affine diff {max_diff(mine_affine, their_affine):.3g} mm"
        )


def check_dcm2niix(check: SeriesCheck, volume: Volume, outputs: list[NiftiOutput]) -> None:
    data, affine = canonical(volume.array, volume.ras_affine)
    output, how = match_output(data.shape, affine, check.series_number, outputs)
    check.dcm2niix_matched_by = how
    if output is None:
        check.notes.append(f"dcm2niix: {how}")
        return
    output.used = True
    check.dcm2niix_file, check.dcm2niix_stored = output.name, output.stored
    identical, worst, count = compare_voxels(data, output.data)
    check.dcm2niix_voxels_identical, check.dcm2niix_max_voxel_diff = identical, worst
    check.dcm2niix_differing_voxels = count
    check.dcm2niix_affine_diff_mm = max_diff(affine, output.affine)


def check_roundtrip(check: SeriesCheck, volume: Volume, workdir: Path) -> None:
    import nibabel as nib

    path = write_vesalius([volume], workdir)[0]
    image: Any = nib.load(path)
    identical, _, _ = compare_voxels(volume.array, np.asanyarray(image.dataobj))
    check.nifti_roundtrip_identical = identical
    check.nifti_roundtrip_affine_diff_mm = max_diff(volume.ras_affine, image.affine)
    path.unlink()


def check_dataset(dataset: Dataset, folder: Path, dcm2niix: str) -> list[SeriesCheck]:
    volumes = load_vesalius(folder, dataset.series > 1)
    images = dict(load_simpleitk(folder))
    checks: list[SeriesCheck] = []
    with tempfile.TemporaryDirectory(prefix="io_series_load-check-") as tmp:
        workdir = Path(tmp)
        _spawn([dcm2niix, "-z", "n", "-o", str(workdir), str(folder)], workdir / "dcm2niix.log")
        outputs = read_dcm2niix_outputs(workdir)
        for volume in volumes:
            number = volume.metadata.get("series_number")
            check = SeriesCheck(
                dataset=dataset.name,
                series_instance_uid=str(volume.identity.series_instance_uid),
                series_number=int(number) if number is not None else None,
                description=str(volume.metadata.get("series_description", "")),
                shape=[int(n) for n in volume.array.shape],
                vesalius_dtype=str(volume.array.dtype),
            )
            check_simpleitk(check, volume, images)
            check_dcm2niix(check, volume, outputs)
            check_roundtrip(check, volume, workdir)
            checks.append(check)
    if len(volumes) != dataset.series:
        checks[0].notes.append(f"Vesalius found {len(volumes)} series, {dataset.series} expected")
    for uid in images:
        checks[0].notes.append(f"SimpleITK series {uid} has no Vesalius counterpart")
    for output in outputs:
        if not output.used:
            checks[0].notes.append(f"dcm2niix output {output.name} matched no Vesalius series")
    return checks


# --- report --------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    dataset: str
    tool: str
    seconds: float
    min_seconds: float
    max_seconds: float
    process_seconds: float
    cpu_seconds: float
    mvox_per_s: float
    peak_rss_mb: float
    load_peak_mb: float
    vs_simpleitk: float
    vs_dcm2niix: float
    correctness: str


def _timed(trials: list[Trial], dataset: str, tool: str, attribute: str) -> list[float]:
    return [float(getattr(t, attribute)) for t in trials if t.dataset == dataset and t.tool == tool and not t.warmup]


def _median(trials: list[Trial], dataset: str, tool: str, attribute: str) -> float:
    return statistics.median(_timed(trials, dataset, tool, attribute))


def _correctness(tool: str, checks: list[SeriesCheck]) -> str:
    if tool == VESALIUS:
        return "reference"
    if tool == SIMPLEITK:
        ok, diffs = sum(c.simpleitk_ok() for c in checks), [c.simpleitk_affine_diff_mm for c in checks]
    elif tool == DCM2NIIX:
        ok, diffs = sum(c.dcm2niix_ok() for c in checks), [c.dcm2niix_affine_diff_mm for c in checks]
    else:
        ok, diffs = sum(c.roundtrip_ok() for c in checks), [c.nifti_roundtrip_affine_diff_mm for c in checks]
    worst = max((d if d is not None else float("inf")) for d in diffs)
    prefix = "written file vs memory: " if tool == VESALIUS_NIFTI else ""
    return f"{prefix}{ok}/{len(checks)} identical, max {worst:.1e} mm"


def build_rows(trials: list[Trial], checks: list[SeriesCheck]) -> list[Row]:
    rows = []
    for dataset in DATASETS:
        voxels = sum(int(np.prod(c.shape, dtype=np.int64)) for c in checks if c.dataset == dataset.name)
        sitk_time = _median(trials, dataset.name, SIMPLEITK, "seconds")
        dcm_time = _median(trials, dataset.name, DCM2NIIX, "seconds")
        for tool in TOOLS:
            seconds = _median(trials, dataset.name, tool, "seconds")
            rows.append(
                Row(
                    dataset=dataset.name,
                    tool=tool,
                    seconds=seconds,
                    min_seconds=min(_timed(trials, dataset.name, tool, "seconds")),
                    max_seconds=max(_timed(trials, dataset.name, tool, "seconds")),
                    process_seconds=_median(trials, dataset.name, tool, "process_seconds"),
                    cpu_seconds=_median(trials, dataset.name, tool, "cpu_seconds"),
                    mvox_per_s=voxels / seconds / 1e6,
                    peak_rss_mb=_median(trials, dataset.name, tool, "peak_rss_mb"),
                    load_peak_mb=_median(trials, dataset.name, tool, "load_peak_mb"),
                    vs_simpleitk=sitk_time / seconds,
                    vs_dcm2niix=dcm_time / seconds,
                    correctness=_correctness(tool, [c for c in checks if c.dataset == dataset.name]),
                )
            )
    return rows


def goals(rows: list[Row], checks: list[SeriesCheck]) -> list[tuple[bool | None, str]]:
    """(passed, text); None marks an informational line."""
    lines: list[tuple[bool | None, str]] = []
    for dataset in DATASETS:
        by_tool = {r.tool: r for r in rows if r.dataset == dataset.name}
        mine, sitk_row, dcm = by_tool[VESALIUS], by_tool[SIMPLEITK], by_tool[DCM2NIIX]
        ours = [c for c in checks if c.dataset == dataset.name]
        exact = sum(c.simpleitk_ok() and c.dcm2niix_ok() for c in ours)
        ratio = sitk_row.seconds / mine.seconds
        lines += [
            (
                mine.seconds <= dcm.seconds,
                f"{dataset.name}: Vesalius {mine.seconds:.3f} s <= dcm2niix {dcm.seconds:.3f} s",
            ),
            (
                ratio >= SPEEDUP_GOAL,
                f"{dataset.name}: SimpleITK / Vesalius = {sitk_row.seconds:.3f} / {mine.seconds:.3f} s = "
                f"{ratio:.2f}x >= {SPEEDUP_GOAL}x",
            ),
            (
                exact == len(ours) and len(ours) == dataset.series,
                f"{dataset.name}: identical voxels and affines (<= {AFFINE_TOLERANCE_MM} mm) vs SimpleITK and "
                f"dcm2niix in {exact}/{dataset.series} series",
            ),
            (
                None,
                f"{dataset.name} (information, both write .nii): Vesalius load + write "
                f"{by_tool[VESALIUS_NIFTI].seconds:.3f} s vs dcm2niix {dcm.seconds:.3f} s",
            ),
        ]
    return lines


def _verdict(passed: bool | None) -> str:
    return "INFO" if passed is None else ("PASS" if passed else "FAIL")


def render_table(rows: list[Row]) -> str:
    header = (
        "| Dataset | Tool | Median s | Min-max s | CPU s | Mvox/s | Peak RSS MB | Peak over imports MB | Process s "
        "| vs SimpleITK | vs dcm2niix | Identical voxels / max affine diff |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r.dataset} | {LABELS[r.tool]} | {r.seconds:.3f} | {r.min_seconds:.3f}-{r.max_seconds:.3f} | "
            f"{r.cpu_seconds:.3f} | {r.mvox_per_s:.1f} | {r.peak_rss_mb:.0f} | "
            f"{r.load_peak_mb:.0f} | {r.process_seconds:.3f} | {r.vs_simpleitk:.2f}x | {r.vs_dcm2niix:.2f}x | "
            f"{r.correctness} |"
        )
    return "\n".join(lines)


def _flag(identical: bool | None, worst: float | None, count: int | None) -> str:
    if identical is None:
        return "n/a"
    return "yes" if identical else f"NO (max diff {worst:g}, {count} voxels)"


def _series_name(check: SeriesCheck) -> str:
    number = "no SeriesNumber" if check.series_number is None else str(check.series_number)
    return f"{number}, {check.description or 'no description'}"


def render_checks(checks: list[SeriesCheck]) -> str:
    lines = [
        "| Dataset | Series (number, description) | Shape [i,j,k] | dtype Vesalius / SimpleITK | "
        "= SimpleITK voxels | SimpleITK affine diff mm | dcm2niix file (stored) | = dcm2niix voxels | "
        "dcm2niix affine diff mm |",
        "|" + "---|" * 9,
    ]
    for c in checks:
        sitk_diff = "n/a" if c.simpleitk_affine_diff_mm is None else f"{c.simpleitk_affine_diff_mm:.1e}"
        dcm_diff = "n/a" if c.dcm2niix_affine_diff_mm is None else f"{c.dcm2niix_affine_diff_mm:.1e}"
        lines.append(
            f"| {c.dataset} | {_series_name(c)} | {'x'.join(map(str, c.shape))} | "
            f"{c.vesalius_dtype} / {c.simpleitk_dtype} | "
            f"{_flag(c.simpleitk_voxels_identical, c.simpleitk_max_voxel_diff, c.simpleitk_differing_voxels)} | "
            f"{sitk_diff} | `{c.dcm2niix_file}` ({c.dcm2niix_stored}) | "
            f"{_flag(c.dcm2niix_voxels_identical, c.dcm2niix_max_voxel_diff, c.dcm2niix_differing_voxels)} | "
            f"{dcm_diff} |"
        )
    notes = [f"- {c.dataset} ({_series_name(c)}): {note}" for c in checks for note in c.notes]
    return "\n".join(lines + (["", *notes] if notes else []))


def versions(dcm2niix: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("vesalius", "numpy", "scipy", "pydicom", "nibabel", "SimpleITK"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    banner = subprocess.run([dcm2niix, "-v"], capture_output=True, text=True, check=False).stdout.split()
    found["dcm2niix"] = next((w for w in banner if w.startswith("v1.")), " ".join(banner[-1:]))
    return found


def command_line() -> str:
    executable = Path(sys.executable)
    try:
        shown = str(executable.relative_to(Path.cwd()))
    except ValueError:
        shown = str(executable)
    return f"cd {shlex.quote(str(Path.cwd()))} && {shlex.join([shown, *sys.argv])}"


def contention_line(c: Contention) -> str:
    warning = " Timings are skewed by that work; rerun on an idle machine." if c.other_cores > 0.1 else ""
    return (
        f"Other processes used {c.other_cpu_seconds:.1f} CPU s during the {c.wall_seconds:.0f} s of timing "
        f"({c.other_cores:.2f} of the {os.cpu_count()} cores on average; load average {c.load_average_before:.2f} "
        f"before, {c.load_average_after:.2f} after).{warning}"
    )


def render_section(report: dict[str, Any], rows: list[Row], checks: list[SeriesCheck], contention: Contention) -> str:
    m, v = report["machine"], report["versions"]
    goal_lines = [f"- **{_verdict(p)}** {text}" for p, text in report["goals"]]
    return "\n".join(
        [
            MARK_START,
            "## DICOM series loading: Vesalius vs SimpleITK vs dcm2niix",
            "",
            f"Written by `benchmarks/io_series_load.py` on {report['date']}; do not edit by hand. Command: "
            f"`{report['command']}`.",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['memory_gib']} GiB, {m['os']}. "
            + ", ".join(f"{k} {val}" for k, val in v.items())
            + ".",
            "",
            f"Median of {report['runs']} runs, each tool in a fresh process per run, after one untimed run of "
            "each to warm the file cache. *Median s* is the load alone for the Python tools (after their imports) "
            "and the whole process for dcm2niix (`-z n`: uncompressed .nii plus its default JSON sidecars); "
            "*CPU s* is the user + system CPU time of the same span (all threads), a check on timings disturbed by "
            "other work; *Process s* is the whole child process, interpreter start and imports included. "
            "*Peak RSS* is the child's `ru_maxrss` (forked from a minimal launcher, so not inflated by the "
            "benchmark's own memory); "
            "*Peak over imports* subtracts the high-water mark (VmHWM) reached after the imports (dcm2niix: whole "
            "process). Vesalius reads with its default 2 decoding threads; SimpleITK is timed to "
            "`Execute()` (no numpy copy). Ratios are the other tool's median time over this row's; above 1 means "
            "this row is faster.",
            "",
            render_table(rows),
            "",
            contention_line(contention),
            "",
            "Goals: Vesalius load at most dcm2niix's time and at least 1.5x faster than SimpleITK, with identical "
            "voxels and affines.",
            "",
            *goal_lines,
            "",
            "Per-series check, in the same run: Vesalius against SimpleITK in [i,j,k] and LPS (SimpleITK's array "
            "transposed from [k,j,i], affine from direction x spacing and origin); against dcm2niix after "
            "`nibabel.as_closest_canonical` of both, with dcm2niix's `scl_slope`/`scl_inter` applied. Voxels "
            "compare with `np.array_equal` after a cast to a common dtype; affines within "
            f"{AFFINE_TOLERANCE_MM} mm.",
            "",
            render_checks(checks),
            MARK_END,
        ]
    )


def run(data: Path, runs: int, wait_idle: float) -> int:
    missing = [str(data / d.folder) for d in DATASETS if not (data / d.folder).is_dir()]
    if missing:
        raise SystemExit(
            f"io_series_load: data not found: {', '.join(missing)}. Pass --data with the shared data folder "
            "(holding lidc/LIDC-IDRI-0001 and dicom/brain-mr-study1)."
        )
    try:
        import SimpleITK as sitk
    except ImportError as error:
        raise SystemExit(f"io_series_load: SimpleITK is needed ({error}); pip install SimpleITK") from error
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    dcm2niix = find_dcm2niix()
    print("Checking voxels and affines ...", flush=True)
    checks = [c for d in DATASETS for c in check_dataset(d, data / d.folder, dcm2niix)]
    print(f"Timing {len(TOOLS)} tools x {len(DATASETS)} datasets, median of {runs} ...", flush=True)
    contention = Contention()
    wait_for_idle(wait_idle)
    trials = run_trials(data, runs, dcm2niix, contention)
    rows = build_rows(trials, checks)
    report: dict[str, Any] = {
        "benchmark": "io_series_load",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "data": str(data),
        "runs": runs,
        "machine": machine(),
        "contention": {**asdict(contention), "other_cores": contention.other_cores},
        "versions": versions(dcm2niix),
        "datasets": [asdict(d) for d in DATASETS],
        "goals": goals(rows, checks),
        "summary": [asdict(r) for r in rows],
        "checks": [asdict(c) for c in checks],
        "trials": [asdict(t) for t in trials],
    }
    section = render_section(report, rows, checks, contention)
    print()
    print(render_table(rows))
    print()
    for passed, text in report["goals"]:
        print(f"{_verdict(passed)}  {text}")
    print(f"\n{contention_line(contention)}")
    print()
    print(render_checks(checks))
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(report, indent=2, default=str) + "\n")
    update_docs("io_series_load", section)
    print(f"\nWrote {RESULTS_JSON.relative_to(REPO)} and {DOCS_MD.relative_to(REPO)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool and dataset (default 5)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="wait up to this long for other processes to go quiet before timing (default 120)",
    )
    parser.add_argument("--worker", choices=PYTHON_TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--multi", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.folder, args.multi, args.out, args.report)
        return 0
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return run(args.data.resolve(), args.runs, args.wait_idle)


if __name__ == "__main__":
    sys.exit(main())
