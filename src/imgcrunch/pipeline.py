"""The one work loop: claim the next batch of the request that has waited longest, process it,
record it; and finalising a request. Knows nothing of FastAPI or Celery: each mode runs
`Pipeline.work_next` in its own loop and is told of a finished request through `on_finished`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from imgcrunch import codec, csvio, logs, metrics, repository, webhooks
from imgcrunch.codec_pool import CodecPool, encode_and_store
from imgcrunch.db import SessionFactory
from imgcrunch.fetcher import Fetcher
from imgcrunch.http_errors import FetchError
from imgcrunch.models import ACTIVE_STATUSES, Request, RequestStatus, utcnow
from imgcrunch.public_urls import PublicUrls
from imgcrunch.repository import Batch, Claim, ClaimedImage, ImageResult
from imgcrunch.storage import Storage, input_csv_key, output_csv_key

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger(__name__)

# The upload applied the configured limits already; a file it accepted is accepted here too.
_ACCEPTED_AT_UPLOAD = csvio.Limits(
    max_rows=sys.maxsize, max_urls_per_row=sys.maxsize, max_url_length=sys.maxsize
)


async def accept(
    session: AsyncSession,
    storage: Storage,
    data: bytes,
    parsed: csvio.ParsedCsv,
    *,
    quality: int,
    effort: codec.Effort,
    webhook_url: str | None = None,
    owner: str | None = None,
) -> uuid.UUID:
    """Keep a validated input CSV and record its request, queued. Its rows are stored later, by
    `Pipeline.ingest` from the kept file, so a big catalog is answered at once."""
    request_id = uuid.uuid4()
    key = input_csv_key(request_id)
    await asyncio.to_thread(storage.put, key, data)
    async with session.begin():
        await repository.create_request(
            session,
            repository.NewRequest(
                id=request_id,
                total_images=parsed.image_count,
                extra_columns=parsed.extra_columns,
                quality=quality,
                effort=effort,
                webhook_url=webhook_url,
                input_key=key,
                owner=owner,
            ),
        )
    return request_id


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineOptions:
    public_base_url: str
    max_pixels: int
    background: tuple[int, int, int]
    max_in_flight: int  # images downloaded or being compressed at once: bounds memory
    claim_timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Sweep:
    batches: list[Batch]  # stale claims, released: send them again
    uningested: list[uuid.UUID]  # requests whose rows were never stored: ingest them again


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
        self._urls = PublicUrls(options.public_base_url)
        self._in_flight = asyncio.Semaphore(options.max_in_flight)
        self._cancelled: set[uuid.UUID] = set()

    def cancel(self, request_id: uuid.UUID) -> None:
        """In this process, skip the request's images not yet downloaded or compressed. (The
        database already refuses their results; this saves the work.)"""
        self._cancelled.add(request_id)

    async def ingest(self, request_id: uuid.UUID) -> bool:
        """Store a request's products and images from its kept input CSV; False if it can't be.

        The upload validated the file and answered at once; the rows are stored here, once,
        so a big catalog never holds up the answer and a crash in between loses nothing.
        """
        logs.request_id.set(request_id)
        async with self.sessions() as session:
            request = await repository.get_request(session, request_id)
            if request is None or request.status not in ACTIVE_STATUSES:
                return False
            if await repository.is_ingested(session, request_id):
                return True
        try:
            data = await asyncio.to_thread(self.storage.get, request.input_key)
            parsed = await asyncio.to_thread(csvio.parse, data, _ACCEPTED_AT_UPLOAD)
        except (OSError, csvio.CsvError) as exc:
            log.exception("request %s: its input CSV cannot be read again", request_id)
            await self._fail(request, f"input CSV unreadable: {exc}")
            return False
        async with self.sessions.begin() as session:
            await repository.ingest_rows(session, request_id, parsed.rows, now=utcnow())
        return True

    async def resume(self, request_id: uuid.UUID) -> None:
        """Make a request claimable: ingest it if need be, and finalise it if every image was
        already done (before a restart) so no claim is left to do it."""
        if await self.ingest(request_id):
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
        False when no request has an image left to claim."""
        claim = await self.claim_next(batch_size=batch_size)
        if claim is None:
            return False
        try:
            await self.process_claimed(claim)
        except Exception:
            with contextlib.suppress(Exception):  # else its claims wait until they go stale
                await self.release(claim.batch)
            raise
        return True

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

    async def unclaimed_batches(self, request_id: uuid.UUID, *, batch_size: int) -> int:
        """How many batches the request's images not yet claimed make."""
        async with self.sessions() as session:
            count = await repository.unclaimed_image_count(session, request_id)
        return -(-count // batch_size)

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
            )
            results = await asyncio.gather(
                *(self._process_image(batch.request_id, image, codec_options) for image in claimed)
            )
            _count(results)
            # The files were written without waiting for the disk; they are made durable here,
            # all at once, before the database says they exist.
            written = [result.output_key for result in results if result.output_key]
            await asyncio.to_thread(self.storage.sync, written)
            async with self.sessions.begin() as session:
                await repository.record_results(session, batch.request_id, results, now=utcnow())
                if not await repository.is_complete(session, batch.request_id):
                    return  # the common case, answered without a session of its own
        await self.finalize_if_complete(batch.request_id)

    async def _process_image(
        self, request_id: uuid.UUID, image: ClaimedImage, options: codec.CodecOptions
    ) -> ImageResult:
        logs.image_id.set(image.id)  # a task of its own (gather): its lines alone carry it
        if request_id in self._cancelled:
            return _cancelled(image)
        try:
            data = await self._download(image.source_url)
        except Exception as exc:
            return _failure(request_id, image, exc)
        try:
            if request_id in self._cancelled:
                return _cancelled(image)
            encoded = await self.codec_pool.run(
                encode_and_store, self.storage, request_id, data, options
            )
            metrics.CODEC_SECONDS.observe(encoded.seconds)
        except Exception as exc:
            return _failure(request_id, image, exc)
        finally:
            self._in_flight.release()
        return ImageResult(
            image_id=image.id,
            output_key=encoded.key,
            bytes_in=len(data),
            bytes_out=encoded.size,
            width=encoded.width,
            height=encoded.height,
            kept_original=encoded.kept_original,
        )

    async def _download(self, url: str) -> bytes:
        """The image's bytes, with an in-flight slot held for the caller to release.

        The origin's own slot is taken first, the in-flight slot only then: images queued
        behind a slow origin hold none of the slots that bound memory, so images from other
        origins go on meanwhile.
        """
        async with self.fetcher.host_slot(url):
            await self._in_flight.acquire()
            try:
                with metrics.FETCH_SECONDS.time():
                    return await self.fetcher.fetch(url)
            except BaseException:
                self._in_flight.release()
                raise

    async def release(self, batch: Batch) -> int:
        """Give back this worker's claims on a batch it could not finish, for another run."""
        async with self.sessions.begin() as session:
            return await repository.release_claims(session, worker=self.worker_id, batch=batch)

    async def sweep(self, *, batch_size: int) -> Sweep:
        """Find work that a dead process left behind; finish what only needs finalising.

        For several workers sharing a database: claims older than the claim timeout are
        released and returned as batches to send again; requests never ingested are returned
        to ingest again; requests with every image recorded but never finalised are finalised.
        """
        now = utcnow()
        stale_before = now - timedelta(seconds=self.options.claim_timeout)
        async with self.sessions.begin() as session:
            batches = await repository.release_stale_claims(
                session, stale_before=stale_before, batch_size=batch_size
            )
            uningested = await repository.uningested_request_ids(
                session, created_before=stale_before
            )
            complete = await repository.complete_unfinished_request_ids(session)
        for request_id in complete:
            await self.finalize_if_complete(request_id)
        for batch in batches:
            log.warning("re-running a stale claim: %s", batch)
        return Sweep(batches=batches, uningested=uningested)

    async def finalize_if_complete(self, request_id: uuid.UUID) -> bool:
        """Write the output CSV, set the final status and queue the webhook, exactly once."""
        logs.request_id.set(request_id)
        async with self.sessions() as session:
            if not await repository.is_complete(session, request_id):
                return False
            request = await repository.get_request(session, request_id)
            assert request is not None
            rows = [
                _output_row(product, self._urls.stored)
                async for product in repository.product_outcomes(session, request_id)
            ]
        output = csvio.write_output(request.extra_columns, rows)
        key = output_csv_key(request_id)
        # Written before the status flips: whoever sees "completed" can download at once. Two
        # finishers write identical bytes atomically; only one wins the status update below.
        await asyncio.to_thread(self.storage.put, key, output)
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


def _count(results: Sequence[ImageResult]) -> None:
    for result in results:
        if result.ok:
            metrics.IMAGES.labels("done", "kept_original" if result.kept_original else "").inc()
            metrics.IMAGE_BYTES.labels("in").inc(result.bytes_in or 0)
            metrics.IMAGE_BYTES.labels("out").inc(result.bytes_out or 0)
        elif result.error_code != "cancelled":
            metrics.IMAGES.labels("failed", result.error_code or "").inc()


def _cancelled(image: ClaimedImage) -> ImageResult:
    # Never recorded: the cancel moved the image out of `pending` already.
    return ImageResult(image_id=image.id, error_code="cancelled", error_message="cancelled")


def _failure(request_id: uuid.UUID, image: ClaimedImage, error: Exception) -> ImageResult:
    """The result of an image that failed; call from the `except` that caught `error`."""
    if isinstance(error, FetchError | codec.CodecError):
        # Not the URL: a signed URL's query is a credential. The image id (on the line) finds it.
        log.info("image failed: %s: %s", error.code, error.message)
        return ImageResult(image_id=image.id, error_code=error.code, error_message=error.message)
    # Anything else is our bug, not the image's: log it, and still never fail the batch.
    log.exception("image %s of request %s failed unexpectedly", image.id, request_id)
    return ImageResult(
        image_id=image.id,
        error_code="internal_error",
        error_message=f"{type(error).__name__}: {error}",
    )


def _output_row(
    product: repository.ProductOutcome, url_of: Callable[[str], str]
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
    )


def _errors(images: Sequence[repository.ImageRow]) -> list[str]:
    return [
        f"{image.source_url}: {image.error_code}: {image.error_message}"
        for image in images
        if image.error_code
    ]
