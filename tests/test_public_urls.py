"""Every URL handed out is built in one place, from the configured public addresses."""

from __future__ import annotations

import uuid

from imgcrunch.config import Settings
from imgcrunch.public_urls import PublicUrls

REQUEST = uuid.UUID("5c0e5c0e-0000-4000-8000-000000000001")
KEY = f"images/{REQUEST}/{'ab' * 32}.jpg"


def test_status_download_and_pages_start_with_the_public_base_url() -> None:
    urls = PublicUrls("https://crunch.example.com/api")
    assert urls.status(REQUEST) == f"https://crunch.example.com/api/status/{REQUEST}"
    assert urls.download(REQUEST) == f"https://crunch.example.com/api/download/{REQUEST}"
    assert urls.page("/requests?limit=2&offset=2") == (
        "https://crunch.example.com/api/requests?limit=2&offset=2"
    )


def test_a_stored_image_is_served_by_the_api_unless_an_images_url_is_set() -> None:
    assert (
        PublicUrls("https://crunch.example.com").stored(KEY) == f"https://crunch.example.com/{KEY}"
    )
    cdn = PublicUrls("https://crunch.example.com", images="https://cdn.example.com/catalog")
    assert cdn.stored(KEY) == f"https://cdn.example.com/catalog/{KEY}"
    assert cdn.status(REQUEST) == f"https://crunch.example.com/status/{REQUEST}"  # not the CDN


def test_the_settings_give_addresses_without_a_trailing_slash() -> None:
    settings = Settings(
        public_base_url="https://crunch.example.com/", public_images_url="https://cdn.example/"
    )
    urls = PublicUrls(settings.public_base_url, images=settings.public_images_url)
    assert urls.download(REQUEST) == f"https://crunch.example.com/download/{REQUEST}"
    assert urls.stored(KEY) == f"https://cdn.example/{KEY}"


def test_without_a_public_base_url_the_service_names_itself_on_its_port() -> None:
    urls = PublicUrls(Settings(port=8123).public_base_url)
    assert urls.status(REQUEST) == f"http://localhost:8123/status/{REQUEST}"
