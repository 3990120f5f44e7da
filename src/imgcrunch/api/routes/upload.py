"""POST /upload: validate the whole CSV, record the request, answer at once."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, BinaryIO

from fastapi import APIRouter, File, Form, Request, UploadFile

from imgcrunch import csvio, pipeline, repository
from imgcrunch.address_guard import AddressGuard, check_url
from imgcrunch.api.deps import OwnerDep, ServicesDep, SessionDep, SettingsDep
from imgcrunch.api.errors import ApiError
from imgcrunch.api.presenting import error_responses
from imgcrunch.api.schemas import Accepted
from imgcrunch.codec import Effort
from imgcrunch.fetcher import is_http_url
from imgcrunch.http_errors import FetchError
from imgcrunch.imaging import Variant, VariantsError, profiles
from imgcrunch.imaging import variants as variant_specs
from imgcrunch.imaging.profiles import Profile

router = APIRouter(tags=["requests"])

_FULL_RETRY_AFTER = 30  # seconds: about how long a small request takes to get through
_ERRORS = error_responses(401, 413, 422, 429)
_FIELDS = ("file", "webhook_url", "quality", "effort", "variants", "profile", "refresh")


@router.post("/upload", status_code=202, response_model=Accepted, responses=_ERRORS)
async def upload(
    request: Request,
    owner: OwnerDep,
    services: ServicesDep,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the products CSV")],
    webhook_url: Annotated[
        str,
        Form(
            # Documented, not enforced by the framework: the route's own check says what is
            # wrong in its own words (`invalid_webhook_url`), and forgives spaces around it.
            json_schema_extra={"pattern": r"^(?:https?://\S+)?$"},
            description="called with a JSON POST when the request is done: an absolute http(s) "
            "URL (IMGCRUNCH_MAX_URL_LENGTH characters at most) of a host on a public network, "
            "unless IMGCRUNCH_ALLOW_PRIVATE_NETWORKS; empty for none",
        ),
    ] = "",
    quality: Annotated[
        int | None,
        Form(
            ge=1,
            le=100,
            description="JPEG quality: the look of standard libjpeg at this quality, whatever "
            "the effort (IMGCRUNCH_JPEG_QUALITY by default)",
        ),
    ] = None,
    effort: Annotated[
        Effort | None,
        Form(
            description="balanced: fewer bytes than standard libjpeg, for less CPU; max: the "
            "fewest bytes, for about four times balanced's CPU (IMGCRUNCH_JPEG_EFFORT by default)"
        ),
    ] = None,
    variants: Annotated[
        str,
        Form(
            max_length=variant_specs.MAX_SPEC_LENGTH,
            json_schema_extra={"pattern": variant_specs.PATTERN},  # as webhook_url's
            description="what to make of each image, e.g. `zoom=2000:jpeg, listing=800:avif, "
            "thumb=200x200:pad:webp`: a name, `=`, then colon-separated parts in any order: a "
            "box (`N`, `Wx`, `xH`, `WxH`; fit inside, never enlarged), a fit (`inside`, or "
            "`pad` to exactly the box), a format (`jpeg`, `webp`, `avif`), a quality `qN` and "
            "an effort, and a byte cap (`150kb`, `2mb`: quality is lowered, then size, to fit). "
            "Or a JSON list of objects (name, width, height, fit, format, quality, effort, "
            f"max_bytes). At most {variant_specs.MAX_VARIANTS}; the first fills `Output Image "
            "Urls`, each other its own `<Name> Image Urls` column (IMGCRUNCH_VARIANTS by "
            "default: one JPEG at the original size). Names are unique; a box is at most the "
            "pixel limit (IMGCRUNCH_MAX_PIXELS); `pad` needs both sides",
        ),
    ] = "",
    profile: Annotated[
        str,
        Form(
            json_schema_extra={"enum": ["", *profiles.PROFILES]},  # as webhook_url's
            description="a marketplace whose image rules make the first variant (`Output Image "
            f"Urls`): {', '.join(profiles.PROFILES)}. The image is fixed where the rules allow "
            "(background lifted to white, cropped to the product, padded square, scaled down, "
            "JPEG, under the byte cap) and each image's findings say what could not be; "
            "`variants` then gives the other columns. Empty for none",
        ),
    ] = "",
    refresh: Annotated[
        bool,
        Form(
            description="true: make every image again, ignoring what this owner's earlier "
            "requests made of the same URLs with the same options (after changing encoders, "
            "say). By default an image unchanged at its origin (it answers 304 to the "
            "validators it sent, or sends the same bytes) is reused: not decoded, encoded or "
            "stored again, and at the same URL",
        ),
    ] = False,
) -> Accepted:
    await _refuse_unknown_fields(request)
    rules = _checked_profile(profile)
    made = _checked_variants(variants, services.variants, settings.max_pixels, rules)
    await _refuse_when_full(session, settings, owner)
    webhook = _checked_webhook_url(webhook_url, services.guard, settings.max_url_length)
    # The form's parser has spooled the file to disk already: it is checked and stored from
    # there, a piece at a time, never held in memory whole.
    await _refuse_too_large(file, settings.max_csv_bytes)
    limits = csvio.Limits.from_settings(settings)
    try:
        summary = await asyncio.to_thread(csvio.check, file.file, limits)
    except csvio.CsvError as exc:
        raise _csv_error(exc) from None

    request_id = await pipeline.accept(
        session,
        services.storage,
        file.file,
        summary,
        quality=quality or settings.jpeg_quality,
        effort=effort or Effort(settings.jpeg_effort),
        variants=made,
        webhook_url=webhook,
        owner=owner,
        refresh=refresh,
        profile=rules.name if rules else None,
    )
    services.dispatcher.submit(request_id)
    return Accepted(
        request_id=request_id,
        status="queued",
        status_url=services.urls.status(request_id),
        total_images=summary.image_count,
    )


async def _refuse_unknown_fields(request: Request) -> None:
    """A misspelt field (`qualty=30`) would otherwise be ignored without a word, and the
    request run with the defaults. (The form is parsed already; this reads it again, cached.)"""
    unknown = [name for name in dict.fromkeys((await request.form()).keys()) if name not in _FIELDS]
    if unknown:
        raise ApiError(
            422,
            "unknown_field",
            f"unknown form field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
            f"POST /upload takes {', '.join(_FIELDS)}",
            [{"field": name, "reason": "not a field of POST /upload"} for name in unknown],
        )


async def _refuse_when_full(session: SessionDep, settings: SettingsDep, owner: str | None) -> None:
    """Back-pressure: past the cap, a client is told to come back, rather than the queue (and
    the database, and the disk) growing without bound."""
    active = await repository.count_active_requests(session)
    per_key, own = settings.max_queued_requests_per_key, 0
    if owner is not None and per_key is not None:
        own = await repository.count_active_requests(session, owner=owner)
    await session.rollback()  # end the read, so the upload's own transaction can begin
    if active >= settings.max_queued_requests:
        raise _full(
            f"{active} requests are queued or processing, the most this server takes "
            "(IMGCRUNCH_MAX_QUEUED_REQUESTS)"
        )
    if per_key is not None and own >= per_key:
        raise _full(
            f"this API key has {own} requests queued or processing, the most one key may have "
            "(IMGCRUNCH_MAX_QUEUED_REQUESTS_PER_KEY)"
        )


def _full(reason: str) -> ApiError:
    return ApiError(
        429,
        "too_many_requests",
        f"{reason}; try again in {_FULL_RETRY_AFTER} s",
        headers={"Retry-After": str(_FULL_RETRY_AFTER)},
    )


def _checked_profile(name: str) -> Profile | None:
    if not name.strip():
        return None
    try:
        return profiles.get(name)
    except profiles.UnknownProfile as exc:
        raise ApiError(
            422, "invalid_profile", str(exc), [{"field": "profile", "reason": str(exc)}]
        ) from None


def _checked_variants(
    spec: str, default: tuple[Variant, ...], max_pixels: int, profile: Profile | None
) -> tuple[Variant, ...]:
    """The request's variants (`default` where it names none), after its profile's, or 422
    naming the part that is wrong."""
    try:
        made = variant_specs.parse(spec, max_pixels=max_pixels) if spec.strip() else default
        return made if profile is None else variant_specs.led_by(profile.variant(), made)
    except VariantsError as exc:
        raise ApiError(
            422,
            "invalid_variants",
            f"variants cannot be made: {exc}",
            [{"field": "variants", "reason": str(exc)}],
        ) from None


def _checked_webhook_url(url: str, guard: AddressGuard, max_length: int) -> str | None:
    """The webhook URL, or 422. A host name is checked again at every delivery (its address
    may change); a literal address, credentials or a wrong scheme can be refused now."""
    if not url.strip():
        return None
    url = url.strip()
    if len(url) > max_length:
        raise _bad_webhook_url(f"longer than {max_length} characters")
    if not is_http_url(url):
        raise _bad_webhook_url(f"{url[:100]!r} is not an absolute http(s) URL")
    try:
        check_url(url, guard)
    except FetchError as exc:
        raise _bad_webhook_url(exc.message) from None
    return url


def _bad_webhook_url(reason: str) -> ApiError:
    return ApiError(
        422,
        "invalid_webhook_url",
        f"webhook_url cannot be used: {reason}",
        [{"field": "webhook_url", "reason": reason}],
    )


async def _refuse_too_large(file: UploadFile, limit: int) -> None:
    size = file.size if file.size is not None else await asyncio.to_thread(_size_of, file.file)
    if size > limit:
        raise file_too_large(limit)


def file_too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "file_too_large",
        f"the CSV is over the {limit:,} byte limit (IMGCRUNCH_MAX_CSV_BYTES)",
        [{"field": "file", "reason": f"larger than {limit:,} bytes"}],
    )


# What a form holds beside its CSV: the other fields and the multipart framing, generously.
FORM_ALLOWANCE = 1024 * 1024


def _size_of(file: BinaryIO) -> int:
    return file.seek(0, os.SEEK_END)


def _csv_error(exc: csvio.CsvError) -> ApiError:
    status = 413 if exc.code == "too_many_rows" else 422
    details = [
        {"row": problem.row, "column": problem.column, "reason": problem.reason}
        for problem in exc.problems
    ]
    return ApiError(status, exc.code, exc.message, details)
