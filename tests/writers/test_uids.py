"""Deterministic UIDs: the same job always names its outputs the same, a different model never does."""

from __future__ import annotations

import re

from pydicom.uid import UID

from vesalius.writers.uids import derived_uid


def test_same_parts_give_the_same_valid_uid() -> None:
    uid = derived_uid("1.2.840.1.2.3", "a" * 64, "seg-instance")
    assert uid == derived_uid("1.2.840.1.2.3", "a" * 64, "seg-instance")
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid)
    assert len(uid) <= 64
    assert UID(uid).is_valid


def test_any_changed_part_changes_the_uid() -> None:
    base = derived_uid("1.2.3", "a" * 64, "seg-instance")
    assert derived_uid("1.2.3", "b" * 64, "seg-instance") != base
    assert derived_uid("1.2.4", "a" * 64, "seg-instance") != base
    assert derived_uid("1.2.3", "a" * 64, "seg-series") != base


def test_parts_are_not_merely_concatenated() -> None:
    assert derived_uid("ab", "c") != derived_uid("a", "bc")
    assert derived_uid("abc") != derived_uid("ab", "c")
