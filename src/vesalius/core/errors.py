"""One exception hierarchy, so services can print a precise message instead of a traceback.

Every message names the file, series or field, what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class VesaliusError(Exception):
    """Base of every error Vesalius raises on purpose."""


class InputError(VesaliusError):
    """The user's input cannot be used as given."""


class NoDicomFoundError(InputError):
    """A folder holds no readable DICOM image."""


class NotDicomError(InputError):
    """A file is not DICOM, or is truncated."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: not a readable DICOM file ({reason})")


class SeriesGeometryError(InputError):
    """A series' slices do not form one regular grid (gap, uneven spacing, mixed orientation or size)."""

    def __init__(self, series: str, problems: Sequence[str], files: Sequence[Path | str] = ()) -> None:
        self.series = series
        self.problems = list(problems)
        self.files = [Path(f) for f in files]
        shown = ", ".join(str(f) for f in self.files[:4])
        more = f" (and {len(self.files) - 4} more)" if len(self.files) > 4 else ""
        where = f"; files: {shown}{more}" if self.files else ""
        super().__init__(f"series {series}: " + "; ".join(self.problems) + where)


class PixelDecodeError(InputError):
    """Pixel data cannot be decoded (unsupported or corrupt transfer syntax)."""

    def __init__(self, path: Path | str, transfer_syntax: str, reason: str) -> None:
        self.path = Path(path)
        self.transfer_syntax = transfer_syntax
        super().__init__(f"{self.path}: cannot decode pixel data in transfer syntax {transfer_syntax}: {reason}")


class UnsupportedFormatError(InputError):
    """A file's format is not one Vesalius reads or writes."""


class SeriesSelectionError(InputError):
    """The requested series is absent or the choice is ambiguous."""


class TransformError(VesaliusError):
    """A transform was asked for something its input cannot give."""


class PackageError(VesaliusError):
    """A model package cannot be written or read as asked (bad manifest, unsupported schema, refused overwrite)."""


class PackageIntegrityError(PackageError):
    """A model package's files or manifest differ from the hashes it was saved with."""

    def __init__(self, folder: Path | str, problems: Sequence[str]) -> None:
        self.folder = Path(folder)
        self.problems = list(problems)
        super().__init__(f"{self.folder}: model package failed verification: " + "; ".join(self.problems))


class UnsafePackageError(PackageError):
    """A folder offers pickled weights, which Vesalius never loads because unpickling can run arbitrary code."""


class DatasetError(InputError):
    """A training dataset's layout or contents cannot be used (dataset.json, missing files, channel count)."""


class LabelValueError(DatasetError):
    """A label image holds values that dataset.json does not declare."""


class GridMismatchError(DatasetError):
    """An image and its label (or two channels of one case) do not sample the same grid."""


class PlanFileError(InputError):
    """A plan file cannot be read or does not validate; the message names the file and the field."""


class EvaluationError(InputError):
    """Predictions and references cannot be evaluated as given (empty folder, duplicate case, other grid)."""


class DataLoadingError(VesaliusError):
    """Building a training batch failed; the message names the case and the original error, even from a worker."""

    def __init__(self, message: str, case_id: str | None = None) -> None:
        self.case_id = case_id
        super().__init__(message)

    def __reduce__(self) -> tuple[type[DataLoadingError], tuple[str, str | None]]:
        return (type(self), (str(self), self.case_id))


class TrainingDivergedError(VesaliusError):
    """The loss became nan or infinite: the run stops rather than train on garbage."""
