"""The HTTP API."""

from imgcrunch.api.app import create_app

__all__ = ["create_app"]
