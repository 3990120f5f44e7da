"""`imgcrunch process FILE.csv -o OUT/`: the whole pipeline on this machine, with no server.

The same code as the service in embedded mode (runtime, in-process dispatcher, SQLite), pointed
at the output folder: the images land in `OUT/images/<request>/`, the output CSV beside them
with `file://` URLs, and the database in `OUT/imgcrunch.db`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rich.console import Console

from imgcrunch import csvio, progress, repository
from imgcrunch.codec import Effort
from imgcrunch.config import Settings
from imgcrunch.db import SessionFactory, migrate
from imgcrunch.dispatch import InlineDispatcher, WebhookNudge
from imgcrunch.exit_codes import OK, SOME_FAILED, UNUSABLE
from imgcrunch.imaging import Variant, VariantsError, profiles
from imgcrunch.imaging import variants as variant_specs
from imgcrunch.models import ACTIVE_STATUSES, RequestStatus
from imgcrunch.pipeline import accept
from imgcrunch.runtime import VariantsUnusable, default_variants, open_runtime, open_sessions
from imgcrunch.signing import new_secret

POLL_SECONDS = 0.2
FAILURES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class LocalRun:
    csv_path: Path
    out: Path
    quality: int | None = None
    effort: Effort | None = None
    variants: str | None = None  # the upload's syntax; None: IMGCRUNCH_VARIANTS
    profile: str | None = None  # a marketplace's, imaging.profiles'
    refresh: bool = False  # ignore what earlier runs in the same folder made


def settings_for(run: LocalRun, base: Settings) -> Settings:
    """The environment's settings, with the storage, database and URLs in the output folder."""
    out = run.out.resolve()
    return base.model_copy(
        update={
            "data_dir": out,
            "storage_dir": out,
            "storage_url": f"file://{out}",
            "public_images_url": "",
            "database_url": f"sqlite+aiosqlite:///{out / 'imgcrunch.db'}",
            "public_base_url": out.as_uri(),
            "queue": "inline",
            # No webhooks here: a throwaway secret, so none is made and left in the folder.
            "webhook_secret": (new_secret(),),
        }
    )


def process(run: LocalRun, base: Settings, console: Console) -> int:
    """Process the CSV, showing progress; returns the exit code."""
    with run.csv_path.open("rb") as csv_file:
        return _process_file(run, base, csv_file, console)


def _process_file(run: LocalRun, base: Settings, csv_file: BinaryIO, console: Console) -> int:
    try:
        summary = csvio.check(csv_file, csvio.Limits.from_settings(base))
    except csvio.CsvError as error:
        console.print(f"[red]{run.csv_path}: {error.message}[/red]")
        for problem in error.problems:
            where = f"row {problem.row}" if problem.row is not None else "file"
            column = f", {problem.column}" if problem.column else ""
            console.print(f"  {where}{column}: {problem.reason}")
        return UNUSABLE
    try:
        variants = _variants(run, base)
    except (VariantsError, VariantsUnusable) as error:
        console.print(f"[red]variants cannot be made: {error}[/red]")
        return UNUSABLE
    settings = settings_for(run, base)
    run.out.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    return asyncio.run(_process(run, settings, csv_file, summary, variants, console))


def _variants(run: LocalRun, settings: Settings) -> tuple[Variant, ...]:
    if run.variants is None or not run.variants.strip():
        made = default_variants(settings)
    else:
        made = variant_specs.parse(run.variants, max_pixels=settings.max_pixels)
    if run.profile is None:
        return made
    return variant_specs.led_by(profiles.get(run.profile).variant(), made)


async def _process(
    run: LocalRun,
    settings: Settings,
    csv_file: BinaryIO,
    summary: csvio.CsvSummary,
    variants: tuple[Variant, ...],
    console: Console,
) -> int:
    started = time.monotonic()
    threads = settings.cpu_workers
    nudge = WebhookNudge()
    async with (
        open_sessions(settings) as sessions,
        open_runtime(
            settings, sessions, codec_workers=threads, codec_processes=True, on_finished=nudge
        ) as runtime,
    ):
        async with sessions() as session:
            request_id = await accept(
                session,
                runtime.storage,
                csv_file,
                summary,
                quality=run.quality or settings.jpeg_quality,
                effort=run.effort or Effort(settings.jpeg_effort),
                variants=variants,
                refresh=run.refresh,
                profile=run.profile,
            )
        dispatcher = InlineDispatcher.for_settings(
            runtime.pipeline, runtime.deliverer, sessions, settings, nudge
        )
        await dispatcher.start()
        try:
            dispatcher.submit(request_id)
            snapshot = await _follow(sessions, request_id, console, run.csv_path.name)
        finally:
            await dispatcher.stop()
        async with sessions() as session:
            request = await repository.get_request(session, request_id)
            failures = await repository.failed_images(session, request_id, limit=FAILURES_SHOWN)
            totals = await repository.variant_totals(session, [request_id])
    assert request is not None
    output = None
    if request.output_key:
        output_path = run.out / f"{run.csv_path.stem}.output.csv"
        with output_path.open("wb") as output_file:
            for chunk in runtime.storage.read_chunks(request.output_key):
                output_file.write(chunk)
        output = str(output_path)
    progress.summary(
        console,
        snapshot,
        seconds=time.monotonic() - started,
        output=output,
        failures=[
            progress.FailedImage(
                row=f.row_number,
                url=f.source_url,
                code=f.error_code or "unknown",
                message=f.error_message or "",
            )
            for f in failures
        ],
        more_failures=max(0, request.failed_images - len(failures)),
        variants=[
            progress.VariantFigures(variant.spec(), total.bytes_out)
            for variant, total in zip(variants, totals[request_id], strict=False)
        ],
    )
    if request.status == RequestStatus.COMPLETED:
        return OK
    return SOME_FAILED if request.status == RequestStatus.COMPLETED_WITH_ERRORS else UNUSABLE


async def _follow(
    sessions: SessionFactory, request_id: uuid.UUID, console: Console, label: str
) -> progress.Snapshot:
    with progress.progress_bar(console, label) as bar:
        while True:
            async with sessions() as session:
                request = await repository.get_request(session, request_id)
            assert request is not None
            snapshot = progress.Snapshot(
                status=request.status,
                total=request.total_images,
                done=request.done_images,
                failed=request.failed_images,
                bytes_in=request.bytes_in,
                bytes_out=request.bytes_out,
                reused=request.reused_images,
                non_compliant=request.noncompliant_images if request.profile else None,
            )
            bar.show(snapshot)
            if request.status not in ACTIVE_STATUSES:
                return snapshot
            await asyncio.sleep(POLL_SECONDS)
