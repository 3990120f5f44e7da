"""Dependency aliases for the routes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from imgcrunch import models, repository
from imgcrunch.api.errors import ApiError
from imgcrunch.api.services import Services
from imgcrunch.config import Settings
from imgcrunch.public_urls import PublicUrls


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_urls(services: ServicesDep) -> PublicUrls:
    return services.urls


UrlsDep = Annotated[PublicUrls, Depends(get_urls)]


async def get_session(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    async with services.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def parse_request_id(request_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(request_id)
    except ValueError:
        raise ApiError(
            404, "not_found", f"no request {request_id!r}: request ids are UUIDs"
        ) from None


RequestIdDep = Annotated[uuid.UUID, Depends(parse_request_id)]


_bearer = HTTPBearer(
    auto_error=False,
    description="A key from IMGCRUNCH_API_KEYS; needed only where the server has keys.",
)


async def current_owner(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The caller's owner name (api/auth.py); None when keys are off. 401 without a valid key."""
    if not services.api_keys.enabled:
        return None
    if credentials is None:
        raise _unauthorized("this server needs an API key: send Authorization: Bearer <key>")
    owner = services.api_keys.owner_of(credentials.credentials)
    if owner is None:
        raise _unauthorized("the API key is not valid")
    return owner


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


OwnerDep = Annotated[str | None, Depends(current_owner)]


async def owned_request(
    session: SessionDep, request_id: RequestIdDep, owner: OwnerDep
) -> models.Request:
    """The request named in the path, if the caller may see it; 404 otherwise."""
    request = await repository.get_request(session, request_id)
    # Another key's request is not found, exactly like an unknown one: ids leak nothing.
    if request is None or (owner is not None and request.owner != owner):
        raise ApiError(404, "not_found", f"no request {request_id}")
    return request


OwnedRequestDep = Annotated[models.Request, Depends(owned_request)]
