"""API keys: a client sends `X-API-Key`; the server keeps only each key's SHA-256, under a name used as requester.

Keys are random tokens of high entropy, so one unsalted SHA-256 is enough to make a stolen settings file useless,
and comparing digests with `hmac.compare_digest` over every stored key keeps timing independent of the match.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="An API key issued by the operator; the server stores only its SHA-256.",
)


def hash_api_key(key: str) -> str:
    """The hex SHA-256 stored in ApiSettings.api_keys for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh key and its hash: give the key to the client, store the hash."""
    key = secrets.token_urlsafe(32)
    return key, hash_api_key(key)


class ApiKeys:
    """Key name -> SHA-256 of the key. `identify` returns the name of the matching key, or None."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        self._hashes = {name: bytes.fromhex(digest) for name, digest in hashes.items()}

    def identify(self, key: str | None) -> str | None:
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for name, stored in self._hashes.items():  # no early exit: every key is compared
            if hmac.compare_digest(digest, stored):
                found = name
        return found


def require_api_key(request: Request, key: str | None = Security(API_KEY_HEADER)) -> str:
    """FastAPI dependency: the requester's key name, or 401."""
    keys: ApiKeys = request.app.state.api_keys
    name = keys.identify(key)
    if name is None:
        detail = "missing X-API-Key header" if not key else "invalid API key"
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "X-API-Key"})
    return name
