"""The one place that builds the URLs we hand out: status, download, stored files, next pages.

Each starts with IMGCRUNCH_PUBLIC_BASE_URL, so a service behind a proxy or under another name
hands out addresses that work from where its clients are; a stored image's with
IMGCRUNCH_PUBLIC_IMAGES_URL where it is set (a CDN in front of the bucket). Pure: no I/O.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PublicUrls:
    base: str  # IMGCRUNCH_PUBLIC_BASE_URL, without a trailing slash
    images: str = (
        ""  # IMGCRUNCH_PUBLIC_IMAGES_URL: where the storage's keys are served, if not here
    )

    def status(self, request_id: uuid.UUID) -> str:
        return f"{self.base}/status/{request_id}"

    def download(self, request_id: uuid.UUID) -> str:
        return f"{self.base}/download/{request_id}"

    def stored(self, key: str) -> str:
        """A stored file (an image), served at its storage key."""
        return f"{self.images or self.base}/{key}"

    def page(self, path_and_query: str) -> str:
        """The next page of a listing: `/requests?limit=...`."""
        return f"{self.base}{path_and_query}"
