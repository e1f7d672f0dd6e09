"""K-fold cross-validation splits, stored in a file so every fold, run and engine sees the same cases.

Cases of one patient always land in the same fold (``groups``), and class proportions are kept per fold
when ``strata`` are given; scikit-learn's StratifiedGroupKFold does the assignment. A stored split file is
reused as it is, and refused with the cases named when the dataset no longer matches it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sklearn.model_selection import StratifiedGroupKFold

from vesalius.core.errors import InputError

SPLIT_VERSION = 1


class Fold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fold: int = Field(ge=0, description="Fold index, from 0.")
    train: list[str] = Field(description="Case ids the model of this fold trains on.")
    validation: list[str] = Field(description="Case ids held out to validate this fold.")


class CrossValidationSplit(BaseModel):
    """Which cases validate which fold; every case validates exactly one fold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split_version: int = SPLIT_VERSION
    seed: int
    folds: list[Fold]

    @model_validator(mode="after")
    def _each_case_validates_once(self) -> CrossValidationSplit:
        seen: dict[str, int] = {}
        for fold in self.folds:
            if set(fold.train) & set(fold.validation):
                raise ValueError(f"fold {fold.fold} has cases in both train and validation")
            for case in fold.validation:
                if case in seen:
                    raise ValueError(f"case {case} validates folds {seen[case]} and {fold.fold}")
                seen[case] = fold.fold
        everything = set(seen)
        for fold in self.folds:
            if set(fold.train) | set(fold.validation) != everything:
                raise ValueError(f"fold {fold.fold} does not use every case once")
        return self

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    @property
    def cases(self) -> list[str]:
        return sorted(case for fold in self.folds for case in fold.validation)

    def fold(self, index: int) -> Fold:
        if not 0 <= index < self.n_folds:
            raise InputError(f"fold {index} does not exist; this split has folds 0 to {self.n_folds - 1}")
        return self.folds[index]

    def save(self, path: Path | str) -> Path:
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(self.model_dump_json(indent=2) + "\n")
        return file

    @classmethod
    def load(cls, path: Path | str) -> CrossValidationSplit:
        file = Path(path)
        try:
            return cls.model_validate_json(file.read_text())
        except FileNotFoundError as error:
            raise InputError(f"{file}: no such split file") from error
        except ValidationError as error:
            raise InputError(f"{file}: invalid split file: {error.errors()[0]['msg']}") from error


def make_split(
    case_ids: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
    strata: Mapping[str, Hashable] | None = None,
) -> CrossValidationSplit:
    """Assign cases to folds: a patient's cases together (``groups``), class balance kept (``strata``)."""
    cases = sorted(set(case_ids))
    if len(cases) != len(case_ids):
        raise InputError("case ids must be unique")
    group_of = [(groups or {}).get(case, case) for case in cases]
    if n_folds < 2 or len(set(group_of)) < n_folds:
        raise InputError(f"{n_folds}-fold cross-validation needs at least {n_folds} patients, got {len(set(group_of))}")
    labels = [str((strata or {}).get(case, "")) for case in cases]
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for index, (train, validation) in enumerate(splitter.split(np.zeros(len(cases)), labels, group_of)):
        folds.append(Fold(fold=index, train=[cases[i] for i in train], validation=[cases[i] for i in validation]))
    return CrossValidationSplit(seed=seed, folds=folds)


def load_or_make_split(
    path: Path | str,
    case_ids: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
    strata: Mapping[str, Hashable] | None = None,
) -> CrossValidationSplit:
    """Reuse the stored split when it covers exactly these cases; otherwise write a new one there."""
    file = Path(path)
    if not file.exists():
        split = make_split(case_ids, n_folds=n_folds, seed=seed, groups=groups, strata=strata)
        split.save(file)
        return split
    split = CrossValidationSplit.load(file)
    stored, given = set(split.cases), set(case_ids)
    if stored != given:
        added, removed = sorted(given - stored), sorted(stored - given)
        raise InputError(
            f"{file}: the stored split does not match the dataset (new cases: {added[:5]}, "
            f"cases no longer present: {removed[:5]}); delete the file to make a new split"
        )
    return split
