"""The one work loop: claim the next batch of the request that has waited longest, process it,
record it; and finalising a request. Knows nothing of FastAPI or Celery: each mode runs
`Pipeline.work_next` in its own loop and is told of a finished request through `on_finished`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

from imgcrunch import codec, csvio, logs, metrics, repository, webhooks
from imgcrunch.codec_pool import CodecPool, Output, encode_and_store
from imgcrunch.db import SessionFactory
from imgcrunch.faults import (
    OUT_OF_MEMORY,
    InfrastructureFault,
    infrastructure_fault,
    room_fault,
    storage_fault,
)
from imgcrunch.fetcher import Fetched, Fetcher, Validators
from imgcrunch.http_errors import FetchError
from imgcrunch.imaging import profiles
from imgcrunch.imaging import variants as variant_specs
from imgcrunch.models import ACTIVE_STATUSES, Request, RequestStatus, Reuse, utcnow
from imgcrunch.public_urls import PublicUrls
from imgcrunch.repository import Batch, Claim, ClaimedImage, ImageResult
from imgcrunch.storage import Storage, input_csv_key, output_csv_key

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)


async def accept(
    session: AsyncSession,
    storage: Storage,
    csv_file: BinaryIO,
    summary: csvio.CsvSummary,
    *,
    quality: int,
    effort: codec.Effort,
    variants: tuple[variant_specs.Variant, ...] = variant_specs.DEFAULT,
    webhook_url: str | None = None,
    owner: str | None = None,
    refresh: bool = False,
    profile: str | None = None,
) -> uuid.UUID:
    """Keep an input CSV that `csvio.check` accepted (streamed to the storage) and record its
    request, queued. Its rows are stored later, by `Pipeline.ingest` from the kept file, so a
    big catalog is answered at once."""
    request_id = uuid.uuid4()
    key = input_csv_key(request_id)
    try:
        await asyncio.to_thread(storage.put_file, key, csv_file)
    except OSError as exc:  # the upload answers 503: the storage's fault, not the file's
        raise storage_fault(exc) from exc
    async with session.begin():
        await repository.create_request(
            session,
            repository.NewRequest(
                id=request_id,
                total_images=summary.image_count,
                extra_columns=summary.extra_columns,
                quality=quality,
                effort=effort,
                webhook_url=webhook_url,
                input_key=key,
                owner=owner,
                variants=variant_specs.to_json(variants),
                refresh=refresh,
                profile=profile,
            ),
        )
    return request_id


# Told of each chunk of a request's rows as it is stored, with how many images of it are to be
# claimed: each mode sends its workers to them (embedded: wakes its lanes; scale-out: messages).
StoredHook = Callable[[int], Awaitable[None]]


async def _nothing_to_send(_claimable: int) -> None:
    return None


# The first chunk of rows stored is small, so that work starts within moments of the upload;
# each next is four times the last, up to the most one transaction stores.
_FIRST_CHUNK_IMAGES = 256
_CHUNK_IMAGES = 2_000


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineOptions:
    public_base_url: str
    public_images_url: str  # "": images are served by the API
    max_pixels: int
    background: tuple[int, int, int]
    max_in_flight: int  # images downloaded or being compressed at once: bounds memory
    claim_timeout: float  # a claim's lease, renewed every third of it while its batch runs
    min_free_bytes: int  # no claim while the storage has less room than this


# An unexpected error of ours while processing an image is retried this many claims of it in
# all, then recorded as the image's `internal_error`: one poison image cannot loop for ever.
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class _Deferred:
    """An image handed back unrecorded: a fault of ours (`fault`), or a bug to try again."""

    image_id: int
    fault: InfrastructureFault | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sweep:
    batches: list[Batch]  # stale claims (their holder stopped renewing them), released
    uningested: list[uuid.UUID]  # requests whose rows were never stored: ingest them again
    claimable: int  # batches of unclaimed images, released ones included: work to have on its way


# Told of each request that has just finished (completed or failed), once: each mode has its
# webhook events sent (embedded: wake the courier; scale-out: deliver from the worker).
FinishedHook = Callable[[uuid.UUID], Awaitable[None]]


async def _nobody_to_tell(_request_id: uuid.UUID) -> None:
    return None


class Pipeline:
    def __init__(
        self,
        *,
        sessions: SessionFactory,
        fetcher: Fetcher,
        storage: Storage,
        codec_pool: CodecPool,
        options: PipelineOptions,
        worker_id: str,
        on_finished: FinishedHook = _nobody_to_tell,
    ) -> None:
        self.sessions = sessions
        self.fetcher = fetcher
        self.storage = storage
        self.codec_pool = codec_pool
        self.options = options
        self.worker_id = worker_id
        self._on_finished = on_finished
        self._urls = PublicUrls(options.public_base_url, images=options.public_images_url)
        self._in_flight = asyncio.Semaphore(options.max_in_flight)
        # What the codec workers write to: the storage itself where that is quick, else none.
        self._worker_storage = storage if storage.writes_where_made else None
        self._cancelled: set[uuid.UUID] = set()
        self._waiting: str | None = None  # the fault this process last said held the work up

    def cancel(self, request_id: uuid.UUID) -> None:
        """In this process, skip the request's images not yet downloaded or compressed. (The
        database already refuses their results; this saves the work.)"""
        self._cancelled.add(request_id)

    async def ingest(
        self, request_id: uuid.UUID, *, on_stored: StoredHook = _nothing_to_send
    ) -> bool:
        """Store a request's products and images from its kept input CSV; False if it can't be
        (the request is gone, cancelled, or its CSV unreadable).

        The upload validated the file and answered at once; the rows are stored here, a chunk
        at a time, each once: the first images are claimable within moments, a crash resumes
        after the last chunk stored, and a big catalog never holds up the answer.
        """
        logs.request_id.set(request_id)
        async with self.sessions() as session:
            request = await repository.get_request(session, request_id)
            if request is not None and request.ingested_at is not None:
                return True
            if request is None or request.status not in ACTIVE_STATUSES:
                return False
        try:
            opened = self.storage.opened(request.input_key)
            csv_file = await asyncio.to_thread(opened.__enter__)
        except FileNotFoundError as exc:
            log.exception("request %s: its input CSV cannot be read again", request_id)
            await self._fail(request, f"input CSV unreadable: {exc}")
            return False
        except OSError as exc:  # the storage is away, not the file: try again later
            raise storage_fault(exc) from exc
        try:
            return await self._ingest_rows(request, csv_file, on_stored)
        except csvio.CsvError as exc:
            log.exception("request %s: its input CSV cannot be read again", request_id)
            await self._fail(request, f"input CSV unreadable: {exc}")
            return False
        finally:
            await asyncio.to_thread(opened.__exit__, None, None, None)

    async def _ingest_rows(
        self, request: Request, csv_file: BinaryIO, on_stored: StoredHook
    ) -> bool:
        start = request.ingested_rows
        stored_images = 0
        firsts = repository.FirstImages()
        if start:  # resumed after a crash: the rows stored are known by their firsts
            async with self.sessions() as session:
                firsts = await repository.stored_firsts(session, request.id)
                stored_images = await repository.image_count(session, request.id)
        # Closed here, while its file is open, whichever way the loop ends.
        with contextlib.closing(csvio.rows(csv_file, skip=start)) as rows:
            size = _FIRST_CHUNK_IMAGES
            chunk = await asyncio.to_thread(_rows_of_images, rows, size)
            while chunk:
                size = min(size * 4, _CHUNK_IMAGES)
                # Read ahead: the last chunk marks the request stored in its own transaction.
                following = await asyncio.to_thread(_rows_of_images, rows, size)
                async with self.sessions.begin() as session:
                    stored = await repository.ingest_chunk(
                        session,
                        request.id,
                        chunk,
                        start=start,
                        last=not following,
                        stored_images=stored_images,
                        firsts=firsts,
                        now=utcnow(),
                    )
                if stored is None:  # another stores them, or it was cancelled or deleted
                    return await self._is_ingested(request.id)
                start += len(chunk)
                stored_images += stored.images
                if stored.repeated:
                    async with self.sessions.begin() as session:
                        await repository.record_repeats(
                            session, request.id, stored.repeated, now=utcnow()
                        )
                await on_stored(stored.claimable)
                chunk = following
            if start > request.ingested_rows:  # the last chunk stored marked them all stored
                return True
        # Every row was stored already, by a worker that died before it could say so.
        async with self.sessions.begin() as session:
            if await repository.finish_ingest(session, request.id, rows=start, now=utcnow()):
                return True
        return await self._is_ingested(request.id)

    async def _is_ingested(self, request_id: uuid.UUID) -> bool:
        async with self.sessions() as session:
            return await repository.is_ingested(session, request_id)

    async def resume(
        self, request_id: uuid.UUID, *, on_stored: StoredHook = _nothing_to_send
    ) -> None:
        """Make a request claimable: ingest it if need be, and finalise it if every image was
        already done (before a restart) so no claim is left to do it."""
        if await self.ingest(request_id, on_stored=on_stored):
            await self.finalize_if_complete(request_id)

    async def _fail(self, request: Request, error: str) -> None:
        now = utcnow()
        event = None
        if request.webhook_url:
            event = webhooks.finished_event(
                request, status=RequestStatus.FAILED, download_url=None, now=now
            )
        async with self.sessions.begin() as session:
            await repository.fail_request(session, request.id, error=error, now=now, event=event)
        await self._tell_finished(request.id)

    async def _tell_finished(self, request_id: uuid.UUID) -> None:
        try:
            await self._on_finished(request_id)
        except Exception:
            # The webhook event is in the outbox already: the next delivery round sends it.
            log.exception("request %s: could not hand on that it finished", request_id)

    async def work_next(self, *, batch_size: int) -> bool:
        """The one work loop's step, the same in both modes: claim the next batch of the
        request that has waited longest (fair share, in the database), process it, record it.
        False when no request has an image left to claim; then any request whose finalising
        failed earlier (storage or database away) is finalised.

        A fault of ours is raised as an `InfrastructureFault`, with nothing of it recorded
        against an image: the caller backs off and calls again. Anything else raised is a bug.
        """
        try:
            self._check_storage_room()
            claim = await self.claim_next(batch_size=batch_size)
            if claim is None:
                await self.finalize_complete()
            else:
                await self._process_holding(claim)
        except Exception as error:
            fault = infrastructure_fault(error)
            if fault is None:
                raise
            await self._say_waiting(fault)
            if fault is error:
                raise
            raise fault from error
        await self._say_resumed()
        return claim is not None

    async def _process_holding(self, claim: Claim) -> None:
        """Process a claim, renewing its lease meanwhile; release it if that fails."""
        try:
            async with self._renewing(claim.batch):
                await self.process_claimed(claim)
        except Exception:
            with contextlib.suppress(Exception):  # else its claims wait until they go stale
                await self.release(claim.batch)
            raise

    def _check_storage_room(self) -> None:
        free = self.storage.free_bytes()
        if free is not None:
            metrics.STORAGE_FREE_BYTES.set(free)
        if fault := room_fault(free, self.options.min_free_bytes):
            raise fault

    async def _say_waiting(self, fault: InfrastructureFault) -> None:
        """Say on the active requests why their work is held up (if the database answers)."""
        if fault.reason != self._waiting:  # once per fault, not per try or per image
            log.warning("work is waiting: %s; trying again with backoff", fault.waiting)
        self._waiting = fault.reason
        with contextlib.suppress(Exception):  # the database may be the fault
            async with self.sessions.begin() as session:
                await repository.mark_waiting(session, reason=fault.waiting, now=utcnow())

    async def _say_resumed(self) -> None:
        if self._waiting is None:
            return
        log.info("work goes on: %s has cleared", self._waiting)
        self._waiting = None
        # Were the database to blip right now, each request's next record clears it anyway.
        with contextlib.suppress(Exception):
            async with self.sessions.begin() as session:
                await repository.clear_waiting(session, now=utcnow())

    @contextlib.asynccontextmanager
    async def _renewing(self, batch: Batch) -> AsyncIterator[None]:
        """Renew the batch's lease while it is worked on, so that no sweep hands it to another
        worker however long it takes; a holder that dies stops renewing, and loses it."""
        renewer = asyncio.create_task(self._renew(batch), name="imgcrunch-lease")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew(self, batch: Batch) -> None:
        every = self.options.claim_timeout / 3
        while True:
            await asyncio.sleep(every)
            try:
                async with self.sessions.begin() as session:
                    await repository.renew_claims(
                        session, worker=self.worker_id, batch=batch, now=utcnow()
                    )
            except Exception as exc:  # the database away: the next beat may get through
                log.warning("could not renew the lease of %s: %s", batch, exc)

    async def finalize_complete(self) -> None:
        """Finalise every active request whose images are all recorded: the one whose last
        record's finalising failed, or whose finisher died."""
        async with self.sessions() as session:
            complete = await repository.complete_unfinished_request_ids(session)
        for request_id in complete:
            await self.finalize_if_complete(request_id)

    async def claim_next(self, *, batch_size: int) -> Claim | None:
        """Claim a batch of the request that has waited longest for one (scale-out's fair
        share); None when no request has an image left to claim."""
        now = utcnow()
        async with self.sessions.begin() as session:
            return await repository.claim_next_batch(
                session,
                size=batch_size,
                worker=self.worker_id,
                now=now,
                stale_before=now - timedelta(seconds=self.options.claim_timeout),
            )

    async def unclaimed_images(self, request_id: uuid.UUID) -> int:
        """How many of the request's images are not yet claimed."""
        async with self.sessions() as session:
            return await repository.unclaimed_image_count(session, request_id)

    async def process_claimed(self, claim: Claim) -> None:
        """Process and record claimed images, and finalise their request after its last."""
        batch, claimed = claim.batch, claim.images
        logs.request_id.set(batch.request_id)  # this task's, and its images' tasks'
        if claimed:
            codec_options = codec.CodecOptions(
                quality=batch.quality,
                effort=codec.Effort(batch.effort),
                max_pixels=self.options.max_pixels,
                background=self.options.background,
                variants=variant_specs.from_json(batch.variants),
                profile=profiles.get(batch.profile) if batch.profile else None,
            )
            cache = _CacheKey(repository.owner_key(batch.owner), codec.spec_digest(codec_options))
            cached = await self._cached(batch, cache, claimed)
            outcomes = await asyncio.gather(
                *(
                    self._process_image(
                        batch,
                        image,
                        codec_options,
                        cached.get(repository.url_digest(image.source_url)),
                    )
                    for image in claimed
                )
            )
            made = [outcome for outcome in outcomes if isinstance(outcome, _Made)]
            deferred = [outcome.image_id for outcome in outcomes if isinstance(outcome, _Deferred)]
            # The files were written without waiting for the disk; they are made durable here,
            # all at once, before the database says they exist. (Reused ones were already.)
            written = [
                key
                for outcome in made
                if outcome.result.reuse != Reuse.REUSED
                for key in _output_keys(outcome.result)
            ]
            try:
                await asyncio.to_thread(self.storage.sync, written)
            except OSError as exc:
                raise storage_fault(exc) from exc
            async with self.sessions.begin() as session:
                # A reused entry deleted meanwhile (with the last request that used its
                # outputs) may have taken them along: such an image is made again.
                lost = await _lost_reuses(session, cache, made)
                made = [outcome for outcome in made if outcome.result.image_id not in lost]
                results = [outcome.result for outcome in made]
                await repository.record_results(session, batch.request_id, results, now=utcnow())
                if batch.scope is not None:
                    await repository.remember_sources(
                        session,
                        owner=cache.owner,
                        spec_digest=cache.spec,
                        sources=[o.source for o in made if o.source and o.remember],
                        now=utcnow(),
                    )
                await repository.release_images(
                    session, worker=self.worker_id, image_ids=[*deferred, *lost]
                )
                complete = await repository.is_complete(session, batch.request_id)
            _count(results)
            fault = next(
                (o.fault for o in outcomes if isinstance(o, _Deferred) and o.fault is not None),
                None,
            )
            if fault is not None:
                raise fault  # what was done is recorded; the rest waits for the fault to clear
            if not complete:
                return  # the common case, answered without a session of its own
        await self.finalize_if_complete(batch.request_id)

    async def _cached(
        self, batch: Batch, cache: _CacheKey, images: Sequence[ClaimedImage]
    ) -> dict[str, repository.CachedSource]:
        """The owner's cache entries for these images, by URL digest (none where the request
        asked for a refresh, or stores its images under its own id)."""
        if batch.scope is None or batch.refresh:
            return {}
        async with self.sessions() as session:
            return await repository.cached_sources(
                session,
                owner=cache.owner,
                spec_digest=cache.spec,
                urls=[image.source_url for image in images],
            )

    async def _process_image(
        self,
        batch: Batch,
        image: ClaimedImage,
        options: codec.CodecOptions,
        cached: repository.CachedSource | None,
    ) -> _Made | _Deferred:
        logs.image_id.set(image.id)  # a task of its own (gather): its lines alone carry it
        request_id = batch.request_id
        if request_id in self._cancelled:
            return _cancelled(image)
        validators = Validators(cached.etag, cached.last_modified) if cached else Validators()
        try:
            fetched = await self._download(image.source_url, validators)
        except FetchError as exc:
            return _failure(image, exc)
        except Exception as exc:
            return _unexpected(request_id, image, exc)
        try:
            if cached is not None and fetched.data is None:  # 304: unchanged at the origin
                return _reused(image, cached, fetched.validators)
            data = fetched.data
            assert data is not None  # a 304 comes only to validators, sent only from an entry
            source_sha256 = hashlib.sha256(data).hexdigest()
            if cached is not None and cached.source_sha256 == source_sha256:
                return _reused(image, cached, fetched.validators)
            if request_id in self._cancelled:
                return _cancelled(image)
            encoded = await self.codec_pool.run(
                encode_and_store, self._worker_storage, batch.scope or request_id, data, options
            )
            metrics.CODEC_SECONDS.observe(encoded.seconds)
            for output in encoded.outputs:
                if output.data is not None:  # a bucket: written here, the codec worker free
                    await asyncio.to_thread(self.storage.put, output.key, output.data)
        except codec.CodecError as exc:
            return _failure(image, exc)
        except OSError as exc:  # writing it to our storage: ours, not the image's
            return _Deferred(image.id, storage_fault(exc))
        except MemoryError:
            return _Deferred(image.id, InfrastructureFault(OUT_OF_MEMORY, "compressing"))
        except Exception as exc:
            return _unexpected(request_id, image, exc)
        finally:
            self._in_flight.release()
        first, *others = encoded.outputs
        result = ImageResult(
            image_id=image.id,
            output_key=first.key,
            bytes_in=len(data),
            bytes_out=first.size,
            width=first.width,
            height=first.height,
            kept_original=first.kept_original,
            variants=[_variant_output(output) for output in others] or None,
            quality=first.quality,
            findings=[finding.to_json() for finding in first.findings] or None,
            reuse=None if batch.scope is None else _why_made(batch, cached),
        )
        if batch.scope is None:
            return _Made(result, None)
        source = repository.CachedSource(
            url_digest=repository.url_digest(image.source_url),
            etag=fetched.validators.etag,
            last_modified=fetched.validators.last_modified,
            source_sha256=source_sha256,
            output_key=first.key,
            result=result.outputs(),
        )
        return _Made(result, source)

    async def _download(self, url: str, validators: Validators) -> Fetched:
        """The image's bytes (none where the origin says they are unchanged since
        `validators`), with an in-flight slot held for the caller to release.

        The origin's own slot is taken first, the in-flight slot only then: images queued
        behind a slow origin hold none of the slots that bound memory, so images from other
        origins go on meanwhile.
        """
        async with self.fetcher.host_slot(url):
            await self._in_flight.acquire()
            try:
                with metrics.FETCH_SECONDS.time():
                    return await self.fetcher.fetch_if_changed(url, validators)
            except BaseException:
                self._in_flight.release()
                raise

    async def release(self, batch: Batch) -> int:
        """Give back this worker's claims on a batch it could not finish, for another run."""
        async with self.sessions.begin() as session:
            return await repository.release_claims(session, worker=self.worker_id, batch=batch)

    async def sweep(self, *, batch_size: int) -> Sweep:
        """Find work that a dead process left behind, and what waits for work to be sent.

        For several workers sharing a database: claims whose lease was not renewed are
        released; requests never ingested are returned to ingest again; requests with every
        image recorded but never finalised are finalised; and the batches still to claim are
        counted, so that a lost message (a broker restarted empty) costs a sweep, not the work.
        """
        now = utcnow()
        stale_before = now - timedelta(seconds=self.options.claim_timeout)
        async with self.sessions.begin() as session:
            batches = await repository.release_stale_claims(
                session, stale_before=stale_before, batch_size=batch_size
            )
            uningested = await repository.uningested_request_ids(
                session, stalled_before=stale_before
            )
            claimable = await repository.claimable_batch_count(session, batch_size=batch_size)
        await self.finalize_complete()
        for batch in batches:
            log.warning("re-running a claim its holder stopped renewing: %s", batch)
        return Sweep(batches=batches, uningested=uningested, claimable=claimable)

    async def finalize_if_complete(self, request_id: uuid.UUID) -> bool:
        """Write the output CSV, set the final status and queue the webhook, exactly once."""
        logs.request_id.set(request_id)
        async with self.sessions() as session:
            if not await repository.is_complete(session, request_id):
                return False
            request = await repository.get_request(session, request_id)
            assert request is not None
            later_variants = variant_specs.from_json(request.variants)[1:]
            key = output_csv_key(request_id)
            # Written before the status flips: whoever sees "completed" can download at once.
            # Two finishers write identical bytes atomically; only one wins the status update.
            try:
                with tempfile.TemporaryFile() as output:
                    await self._write_output(session, request, later_variants, output)
                    await asyncio.to_thread(self.storage.put_file, key, output)
            except OSError as exc:  # retried: the work loop finalises complete requests
                raise storage_fault(exc) from exc
        status = (
            RequestStatus.COMPLETED_WITH_ERRORS
            if request.failed_images
            else RequestStatus.COMPLETED
        )
        now = utcnow()
        event = None
        if request.webhook_url:
            event = webhooks.finished_event(
                request, status=status, download_url=self._urls.download(request_id), now=now
            )
        async with self.sessions.begin() as session:
            won = await repository.finish_request(
                session, request_id, status=status, output_key=key, now=now, event=event
            )
        if won:
            log.info("request %s %s", request_id, status)
            await self._tell_finished(request_id)
        return won

    async def _write_output(
        self,
        session: AsyncSession,
        request: Request,
        later_variants: Sequence[variant_specs.Variant],
        output: BinaryIO,
    ) -> None:
        """The request's output CSV into `output`, a thousand products at a time: a catalog of
        a million images is never in memory whole."""
        layout = _Layout(
            request.extra_columns,
            [variant.column for variant in later_variants],
            compliance=request.profile is not None,
        )
        await asyncio.to_thread(output.write, layout.header())
        rows: list[csvio.OutputRow] = []
        async for product in repository.product_outcomes(session, request.id):
            rows.append(_output_row(product, self._urls.stored, layout))
            if len(rows) == _OUTPUT_ROWS:
                await asyncio.to_thread(_write_rows, output, layout, rows)
                rows = []
        await asyncio.to_thread(_write_rows, output, layout, rows)


_OUTPUT_ROWS = 1000  # products written to the output CSV at a time


@dataclass(frozen=True, slots=True)
class _Layout:
    """The output CSV's columns beyond the fixed ones."""

    extra_columns: Sequence[str]
    variant_columns: Sequence[str]  # of the variants after the first
    compliance: bool  # the request has a marketplace profile

    def header(self) -> bytes:
        return csvio.output_header(
            self.extra_columns, variant_columns=self.variant_columns, compliance=self.compliance
        )

    def rows(self, rows: list[csvio.OutputRow]) -> bytes:
        return csvio.output_rows(
            self.extra_columns,
            rows,
            variant_columns=self.variant_columns,
            compliance=self.compliance,
        )


@dataclass(frozen=True, slots=True)
class _CacheKey:
    owner: str  # repository.owner_key's
    spec: str  # codec.spec_digest of the batch's options


@dataclass(frozen=True, slots=True)
class _Made:
    """An image's result, and what its owner's source cache is to remember of it (None: the
    request stores its images under its own id, from before re-runs)."""

    result: ImageResult
    source: repository.CachedSource | None
    # The entry is new or changed: written back. A reuse whose validators held is not (the
    # reuse check marks its entry used already).
    remember: bool = True


def _reused(image: ClaimedImage, cached: repository.CachedSource, validators: Validators) -> _Made:
    """The image as its owner's cache has it: no decode, no encode, no write."""
    result = ImageResult(image_id=image.id, reuse=Reuse.REUSED, **cached.result)
    refreshed = replace(cached, etag=validators.etag, last_modified=validators.last_modified)
    return _Made(result, refreshed, remember=refreshed != cached)


def _why_made(batch: Batch, cached: repository.CachedSource | None) -> Reuse:
    if batch.refresh:
        return Reuse.REFRESHED
    return Reuse.NOT_CACHED if cached is None else Reuse.CHANGED


async def _lost_reuses(session: AsyncSession, cache: _CacheKey, made: Sequence[_Made]) -> set[int]:
    """The reused images whose cache entry is gone: locked, the others stay till this commits."""
    reused = {
        outcome.source.url_digest: outcome.result.image_id
        for outcome in made
        if outcome.result.reuse == Reuse.REUSED and outcome.source is not None
    }
    if not reused:
        return set()
    present = await repository.lock_entries(
        session, owner=cache.owner, spec_digest=cache.spec, url_digests=list(reused), now=utcnow()
    )
    return {image_id for digest, image_id in reused.items() if digest not in present}


def _count(results: Sequence[ImageResult]) -> None:
    for result in results:
        if result.ok:
            metrics.IMAGES.labels("done", "kept_original" if result.kept_original else "").inc()
            metrics.IMAGE_BYTES.labels("in").inc(result.bytes_in or 0)
            metrics.IMAGE_BYTES.labels("out").inc(result.bytes_out or 0)
        elif result.error_code != "cancelled":
            metrics.IMAGES.labels("failed", result.error_code or "").inc()


def _variant_output(output: Output) -> dict[str, Any]:
    return {
        "key": output.key,
        "bytes": output.size,
        "width": output.width,
        "height": output.height,
        "kept": output.kept_original,
        "quality": output.quality,
    }


def _output_keys(result: ImageResult) -> list[str]:
    first = [result.output_key] if result.output_key else []
    return first + [output["key"] for output in result.variants or ()]


def _cancelled(image: ClaimedImage) -> _Made:
    # Never recorded: the cancel moved the image out of `pending` already.
    return _Made(
        ImageResult(image_id=image.id, error_code="cancelled", error_message="cancelled"), None
    )


def _failure(image: ClaimedImage, error: FetchError | codec.CodecError) -> _Made:
    """An image that failed for its own reasons: the origin's answer, its bytes, the limits."""
    # Not the URL: a signed URL's query is a credential. The image id (on the line) finds it.
    log.info("image failed: %s: %s", error.code, error.message)
    return _Made(
        ImageResult(image_id=image.id, error_code=error.code, error_message=error.message), None
    )


def _unexpected(request_id: uuid.UUID, image: ClaimedImage, error: Exception) -> _Made | _Deferred:
    """A bug of ours, not the image's: tried again on a later claim, then recorded as the
    image's `internal_error`; call from the `except` that caught `error`."""
    log.exception(
        "image %s of request %s failed unexpectedly (attempt %d of %d)",
        image.id,
        request_id,
        image.attempts,
        MAX_ATTEMPTS,
    )
    if image.attempts < MAX_ATTEMPTS:
        return _Deferred(image.id, None)
    return _Made(
        ImageResult(
            image_id=image.id,
            error_code="internal_error",
            error_message=f"{type(error).__name__}: {error}",
        ),
        None,
    )


def _write_rows(output: BinaryIO, layout: _Layout, rows: list[csvio.OutputRow]) -> None:
    output.write(layout.rows(rows))


def _rows_of_images(rows: Iterator[csvio.InputRow], images: int) -> list[csvio.InputRow]:
    """The next rows, as many as hold `images` images (at least one row); [] at the end."""
    taken: list[csvio.InputRow] = []
    count = 0
    for row in rows:
        taken.append(row)
        count += len(row.urls)
        if count >= images:
            break
    return taken


def _output_row(
    product: repository.ProductOutcome, url_of: Callable[[str], str], layout: _Layout
) -> csvio.OutputRow:
    images = product.images
    return csvio.OutputRow(
        serial=product.row_number,
        name=product.product_name,
        input_urls=[image.source_url for image in images],
        output_urls=[url_of(image.output_key) if image.output_key else None for image in images],
        extra=product.extra,
        bytes_in=sum(image.bytes_in or 0 for image in images if image.output_key),
        bytes_out=sum(image.bytes_out or 0 for image in images if image.output_key),
        errors=_errors(images),
        kept_originals=[image.source_url for image in images if image.kept_original],
        changed=[image.source_url for image in images if image.reuse == Reuse.CHANGED],
        variant_urls=_variant_urls(images, url_of, len(layout.variant_columns)),
        compliance=_compliance(images) if layout.compliance else None,
    )


def _compliance(images: Sequence[repository.ImageRow]) -> str:
    """ "compliant", or what keeps the row's images from it, each named by its input URL."""
    problems = [
        f"{image.source_url}: {finding['code']}: {finding['message']}"
        for image in images
        for finding in image.findings or ()
    ]
    problems += [f"{image.source_url}: not made" for image in images if image.error_code]
    return f"not compliant: {'; '.join(problems)}" if problems else "compliant"


def _variant_urls(
    images: Sequence[repository.ImageRow], url_of: Callable[[str], str], count: int
) -> list[list[str | None]]:
    """Per variant after the first, each image's URL (None where the image failed)."""
    return [
        [url_of(image.variants[n]["key"]) if image.variants else None for image in images]
        for n in range(count)
    ]


def _errors(images: Sequence[repository.ImageRow]) -> list[str]:
    return [
        f"{image.source_url}: {image.error_code}: {image.error_message}"
        for image in images
        if image.error_code
    ]
