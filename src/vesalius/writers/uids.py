"""Deterministic DICOM UIDs, so that running a job again yields the same objects instead of duplicates.

Output UIDs derive from what identifies a result (input series UID, model SHA-256, kind of object); a
retried job therefore writes, sends and stores the very same SOP instances, and PACS treats them as one.
"""

from __future__ import annotations

import hashlib

__all__ = ["derived_uid"]

_ROOT = "2.25."
"""The UUID-derived root (PS3.5 B.2): any 128-bit number below it is a valid, globally unique UID."""


def derived_uid(*parts: str) -> str:
    """A DICOM UID (``2.25.<128-bit integer>``, at most 44 characters) that depends only on ``parts``.

    The parts are joined unambiguously (length-prefixed) before hashing, so ``("ab", "c")`` and
    ``("a", "bc")`` give different UIDs.
    """
    if not parts:
        raise ValueError("derived_uid needs at least one part")
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    number = int.from_bytes(digest.digest()[:16], "big")
    return f"{_ROOT}{number}"
