"""Each owner's source cache and storage scope: what a source URL gave last time, so that a
re-run reuses the outputs of the images that did not change (issue 24).

An entry's outputs are referenced by at least one image row of its owner: `delete_request`
removes the entries whose outputs no image refers to any more, with those objects. A worker
that reuses an entry locks it (`lock_entries`) in the transaction that records the reuse, so a
delete and a reuse of the same outputs take turns: whichever comes second sees the other.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from imgcrunch.models import OwnerScope, SourceCacheEntry

_cache = cast(Table, SourceCacheEntry.__table__)
_scopes = cast(Table, OwnerScope.__table__)
_IN_CHUNK = 500  # values in one IN (...): inside every database's parameter cap


def owner_key(owner: str | None) -> str:
    """The cache's and scopes' owner: the API key's owner, or "" for a deployment without keys."""
    return owner or ""


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedSource:
    url_digest: str
    etag: str | None
    last_modified: str | None
    source_sha256: str
    output_key: str
    result: dict[str, Any]  # ImageResult's fields as recorded, the error fields left out


async def owner_scope(session: AsyncSession, owner: str | None) -> uuid.UUID:
    """The owner's storage scope, made on its first request (two at once agree on one)."""
    key = owner_key(owner)
    found: uuid.UUID | None = await session.scalar(
        select(_scopes.c.scope).where(_scopes.c.owner == key)
    )
    if found is not None:
        return found
    await session.execute(
        _insert_ignoring(session, _scopes, ["owner"]), {"owner": key, "scope": uuid.uuid4()}
    )
    scope: uuid.UUID | None = await session.scalar(
        select(_scopes.c.scope).where(_scopes.c.owner == key)
    )
    assert scope is not None
    return scope


async def cached_sources(
    session: AsyncSession, *, owner: str, spec_digest: str, urls: Iterable[str]
) -> dict[str, CachedSource]:
    """The owner's entries for these URLs made with this spec, by URL digest."""
    digests = sorted({url_digest(url) for url in urls})
    found: dict[str, CachedSource] = {}
    for chunk in _chunks(digests):
        rows = await session.execute(
            select(
                _cache.c.url_digest,
                _cache.c.etag,
                _cache.c.last_modified,
                _cache.c.source_sha256,
                _cache.c.output_key,
                _cache.c.result,
            ).where(
                _cache.c.owner == owner,
                _cache.c.spec_digest == spec_digest,
                _cache.c.url_digest.in_(chunk),
            )
        )
        for row in rows:
            found[row.url_digest] = CachedSource(**row._asdict())
    return found


async def lock_entries(
    session: AsyncSession,
    *,
    owner: str,
    spec_digest: str,
    url_digests: Sequence[str],
    now: datetime,
) -> set[str]:
    """Those of the entries that still exist, marked used now and locked until the transaction
    ends, so that their outputs are not deleted meanwhile. An UPDATE, not a SELECT: it locks
    the rows in PostgreSQL, and in SQLite it starts the transaction's write at once (a read
    would not), so that a delete committed after this read cannot slip in before the write."""
    present: set[str] = set()
    for chunk in _chunks(sorted(set(url_digests))):
        rows = await session.execute(
            _cache.update()
            .where(
                _cache.c.owner == owner,
                _cache.c.spec_digest == spec_digest,
                _cache.c.url_digest.in_(chunk),
            )
            .values(updated_at=now)
            .returning(_cache.c.url_digest)
        )
        present.update(rows.scalars())
    return present


async def remember_sources(
    session: AsyncSession,
    *,
    owner: str,
    spec_digest: str,
    sources: Sequence[CachedSource],
    now: datetime,
) -> None:
    """Add or replace the owner's entries (the last writer wins: equal bytes, equal outputs)."""
    if not sources:
        return
    statement = _upsert(session, ["owner", "url_digest", "spec_digest"])
    await session.execute(
        statement,
        [
            {
                "owner": owner,
                "url_digest": source.url_digest,
                "spec_digest": spec_digest,
                "etag": source.etag,
                "last_modified": source.last_modified,
                "source_sha256": source.source_sha256,
                "output_key": source.output_key,
                "result": source.result,
                "updated_at": now,
            }
            # In one order everywhere, as `lock_entries` takes them: two batches sharing
            # entries lock them one after the other, never each waiting for the other.
            for source in sorted(sources, key=lambda source: source.url_digest)
        ],
    )


async def forget_outputs(session: AsyncSession, output_keys: Sequence[str]) -> None:
    """Drop the entries whose outputs are about to be deleted."""
    for chunk in _chunks(sorted(set(output_keys))):
        await session.execute(_cache.delete().where(_cache.c.output_key.in_(chunk)))


async def lock_entries_of_outputs(session: AsyncSession, output_keys: Sequence[str]) -> None:
    """Lock the entries of these outputs (PostgreSQL), so that no worker records a reuse of
    them until the caller's transaction has decided which outputs go. (SQLite: the caller's
    delete that follows takes the one write lock.) In URL digest order, as `lock_entries`."""
    for chunk in _chunks(sorted(set(output_keys))):
        await session.execute(
            select(_cache.c.id)
            .where(_cache.c.output_key.in_(chunk))
            .order_by(_cache.c.url_digest)
            .with_for_update()
        )


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def _dialect_insert(session: AsyncSession, table: Table) -> Any:
    name = session.get_bind().dialect.name
    return (postgresql.insert if name == "postgresql" else sqlite.insert)(table)


def _insert_ignoring(session: AsyncSession, table: Table, keys: list[str]) -> Any:
    return _dialect_insert(session, table).on_conflict_do_nothing(index_elements=keys)


def _upsert(session: AsyncSession, keys: list[str]) -> Any:
    statement = _dialect_insert(session, _cache)
    replaced = ("etag", "last_modified", "source_sha256", "output_key", "result", "updated_at")
    return statement.on_conflict_do_update(
        index_elements=keys, set_={column: statement.excluded[column] for column in replaced}
    )
