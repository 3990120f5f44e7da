"""GET /images/{scope}/{file}: the compressed images, as the output CSV links them. The scope
is the owner's (requests from before re-runs used their own id); the file is named by its
content.

Read through the `Storage` protocol, so they are served the same from whichever store holds
them. Keys are content hashes that never change content, so a client or CDN may keep each
for good, and revalidation is answered 304 without reading the file.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import RedirectResponse, Response

from imgcrunch.api.deps import ServicesDep
from imgcrunch.api.errors import ApiError
from imgcrunch.api.presenting import error_responses
from imgcrunch.faults import storage_fault
from imgcrunch.storage import IMMUTABLE, media_type

router = APIRouter(tags=["images"])

_NAME = re.compile(r"(?P<digest>[0-9a-f]{64})\.(?P<extension>jpg|webp|avif)")


@router.get(
    "/images/{scope}/{name}",
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": {}, "image/webp": {}, "image/avif": {}},
            "description": "the compressed image",
        },
        304: {"description": "not modified: the image named in If-None-Match"},
        307: {"description": "with IMGCRUNCH_S3_PRESIGN: the image's presigned URL"},
        **error_responses(404),
    },
)
async def image(
    scope: str,
    name: str,
    services: ServicesDep,
    if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    found = _NAME.fullmatch(name)
    if found is None or not _is_uuid(scope):
        raise ApiError(404, "not_found", f"no image {scope}/{name}")
    key = f"images/{scope}/{name}"
    if services.settings.s3_presign and (
        signed := await asyncio.to_thread(
            services.storage.presigned_url, key, seconds=services.settings.s3_presign_seconds
        )
    ):
        return RedirectResponse(signed, status_code=307)
    etag = f'"{found["digest"]}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if if_none_match is not None and etag in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    try:
        data = await asyncio.to_thread(services.storage.get, key)
    except FileNotFoundError:
        raise ApiError(404, "not_found", f"no image {scope}/{name}") from None
    except OSError as exc:
        raise storage_fault(exc) from exc
    return Response(data, media_type=media_type(key), headers=headers)


# HEAD answers as GET does, without the body; not a second operation in the OpenAPI document.
router.add_api_route("/images/{scope}/{name}", image, methods=["HEAD"], include_in_schema=False)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
