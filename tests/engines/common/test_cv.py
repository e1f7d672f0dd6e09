"""Cross-validation splits: every case validates once, patients stay together, the file is reused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from vesalius.core.errors import InputError
from vesalius.engines.common.cv import CrossValidationSplit, load_or_make_split, make_split

CASES = [f"case_{n:03d}" for n in range(23)]


def test_every_case_validates_exactly_one_fold_and_trains_the_others() -> None:
    split = make_split(CASES, n_folds=5, seed=1)
    assert split.n_folds == 5
    assert sorted(split.cases) == CASES
    for fold in split.folds:
        assert sorted(fold.train + fold.validation) == CASES
    sizes = sorted(len(f.validation) for f in split.folds)
    assert sizes[-1] - sizes[0] <= 1


def test_same_seed_same_split_other_seed_other_split() -> None:
    assert make_split(CASES, seed=3) == make_split(list(reversed(CASES)), seed=3)
    assert make_split(CASES, seed=3) != make_split(CASES, seed=4)


def test_cases_of_one_patient_share_a_fold() -> None:
    groups = {case: f"patient_{n // 3}" for n, case in enumerate(CASES)}
    split = make_split(CASES, n_folds=4, groups=groups)
    fold_of_patient: dict[str, set[int]] = {}
    for fold in split.folds:
        for case in fold.validation:
            fold_of_patient.setdefault(groups[case], set()).add(fold.fold)
    assert all(len(folds) == 1 for folds in fold_of_patient.values())


def test_strata_are_balanced_across_folds() -> None:
    strata = {case: "pneumonia" if n < 15 else "normal" for n, case in enumerate(CASES[:20])}
    split = make_split(CASES[:20], n_folds=5, strata=strata)
    for fold in split.folds:
        assert Counter(strata[c] for c in fold.validation) == {"pneumonia": 3, "normal": 1}


def test_too_few_patients_is_refused() -> None:
    with pytest.raises(InputError, match="needs at least 5 patients, got 3"):
        make_split(["a", "b", "c"], n_folds=5)


def test_split_file_is_reused_and_must_match_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    first = load_or_make_split(path, CASES, seed=7)
    assert path.is_file()
    assert load_or_make_split(path, CASES, seed=99) == first  # stored split wins over a new seed
    with pytest.raises(InputError, match=r"new cases: \['case_999'\]"):
        load_or_make_split(path, [*CASES, "case_999"])


def test_a_hand_broken_split_file_is_refused(tmp_path: Path) -> None:
    path = make_split(CASES, n_folds=3).save(tmp_path / "splits.json")
    content = json.loads(path.read_text())
    content["folds"][1]["validation"].append(content["folds"][0]["validation"][0])
    path.write_text(json.dumps(content))
    with pytest.raises(InputError, match="invalid split file"):
        CrossValidationSplit.load(path)


def test_asking_for_a_fold_that_does_not_exist() -> None:
    with pytest.raises(InputError, match="folds 0 to 4"):
        make_split(CASES).fold(5)
