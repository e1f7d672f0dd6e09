"""What every benchmark script shares: the machine description and its own section of docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS_MD = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and OS of the machine the benchmark runs on."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0] if names else model
    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}",
    }


def run_header(command: str, load_before: float) -> dict[str, Any]:
    """The first keys of a result: date, command (run from the repository root), machine, load before and after."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"cd {REPO} && {command}",
        "machine": machine(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def section_head(name: str, title: str, result: dict[str, Any], machine_extra: str = "") -> list[str]:
    """The first lines of a docs section: markers, title, provenance and the machine line (with ``versions``)."""
    return [
        f"<!-- {name}:start -->",
        f"## {title}",
        "",
        f"Written by `benchmarks/{name}.py` on {result['date']}; do not edit by hand. Command: `{result['command']}`.",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['usable_cores']} cores, load average "
        f"{result['load_before']:.1f} before the run (other jobs share the machine). {result['versions']}."
        + machine_extra,
    ]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def update_docs(name: str, section: str, path: Path = DOCS_MD) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (``section`` holds both)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(name: str, result: dict[str, Any], section: str) -> None:
    """Write ``results/<name>.json`` and the docs section, and show both."""
    import json

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    update_docs(name, section)
    print(section)
    print(f"\nWrote {(RESULTS / f'{name}.json').relative_to(REPO)} and {DOCS_MD.relative_to(REPO)}")
