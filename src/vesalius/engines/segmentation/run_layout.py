"""What a training folder holds besides the folds, and how later steps read it back.

``vesalius train -o RUN`` writes ``RUN/plan.json``, ``RUN/splits.json``, ``RUN/fold_K/`` or ``RUN/all/``; a
cross-validation adds ``RUN/postprocessing.json`` and ``RUN/cv_summary.json``. Training on all cases after a
cross-validation in the same folder copies both into the final package, so it ships with its validated
figures and its post-processing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vesalius.core.errors import InputError
from vesalius.engines.common.manifest import MANIFEST

POSTPROCESSING = "postprocessing.json"
CV_SUMMARY = "cv_summary.json"

__all__ = ["CV_SUMMARY", "POSTPROCESSING", "model_packages", "stored_cv_metrics", "stored_postprocessing"]


def model_packages(model: Path | str) -> list[Path]:
    """A model package itself, or the ``fold_*/model`` packages of a training folder (ensembled by predict)."""
    folder = Path(model)
    if (folder / MANIFEST).is_file():
        return [folder]
    folds = sorted(p for p in folder.glob("fold_*/model") if (p / MANIFEST).is_file())
    if not folds:
        raise InputError(f"{folder}: neither a model package ({MANIFEST}) nor a folder of fold_*/model packages")
    return folds


def stored_postprocessing(run_dir: Path | str) -> dict[int, bool]:
    """The post-processing cross-validation chose for a training folder (none when it has not run)."""
    file = Path(run_dir) / POSTPROCESSING
    if not file.is_file():
        return {}
    return {int(k): bool(v) for k, v in json.loads(file.read_text()).items()}


def stored_cv_metrics(run_dir: Path | str) -> dict[str, Any] | None:
    """The cross-validation figures of a training folder without the per-case rows; None when absent."""
    file = Path(run_dir) / CV_SUMMARY
    if not file.is_file():
        return None
    summary = json.loads(file.read_text())
    overall = {k: v for k, v in summary["overall"].items() if k not in ("cases", "prediction_dir", "reference_dir")}
    return {"folds": summary["folds"], "overall": overall, "postprocessing": summary["postprocessing"]}
