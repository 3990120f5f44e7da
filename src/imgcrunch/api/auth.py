"""Optional API keys: who is asking, and which requests are theirs.

With `IMGCRUNCH_API_KEYS` set, every route but health and the documentation wants
`Authorization: Bearer <key>` (`OwnerDep` in api/deps.py), and a key's owner sees only the
requests it created: another owner's request id answers 404, exactly like an unknown one.
Output images (`/images/...`) stay public: their URLs are unguessable (request UUID and content
hash) and are made to be embedded in catalogs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """Keys and their owners. `owner:key` names the owner; a bare key is owned by its own
    fingerprint. Naming owners lets a key be replaced without losing its requests."""

    _keys: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> ApiKeys:
        keys = []
        for entry in entries:
            owner, _, key = entry.rpartition(":")
            keys.append((key.encode(), owner or fingerprint(key)))
        return cls(tuple(keys))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner_of(self, presented: str) -> str | None:
        """The owner of a presented key, or None; compares with every key in constant time."""
        candidate = presented.encode()
        owner = None
        for key, key_owner in self._keys:
            if hmac.compare_digest(candidate, key) and owner is None:
                owner = key_owner
        return owner


def fingerprint(key: str) -> str:
    """Stands for a key in the database and in logs, never the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]
