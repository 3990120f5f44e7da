"""The web page at /, in a real headless browser: Debian's Chromium driven by Playwright."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import servers
from tests.plugins.origin import ImageServer
from tests.plugins.services import ServiceFactory
from tests.products import write_products

CHROMIUM = Path("/usr/bin/chromium")
# As root and offline: no sandbox, and none of Chromium's calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        servers.unavailable("Chromium (Debian's chromium package)", FileNotFoundError(CHROMIUM))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def test_upload_watch_the_bar_download_and_see_a_thumbnail(
    page: Any, make_service: ServiceFactory, image_server: ImageServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service = make_service()
    a, b = image_server.photo_urls(2, tag="web-")
    missing, kept = image_server.url("/missing.jpg"), image_server.url("/compressed.jpg")
    csv_path = write_products(tmp_path, f'1,Mug,"{a},{b}"', f"2,Bowl,{missing}", f"3,Cup,{kept}")

    page.goto(f"{service.base_url}/")
    page.get_by_label("Products CSV").set_input_files(str(csv_path))
    page.get_by_label("Effort").select_option("max")
    page.get_by_label("Quality").fill("60")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-message")).to_contain_text("Accepted: 4 images")

    card = page.locator("li.request").first
    expect(card.locator("progress")).to_have_attribute("value", "100")
    expect(card).to_have_attribute("data-status", "completed_with_errors")
    expect(card).to_contain_text("3 of 4 done")
    expect(card).to_contain_text("1 kept as they were")
    with page.expect_download() as download:
        card.get_by_role("button", name="Download CSV").click()
    output = Path(download.value.path()).read_text()
    assert output.startswith("S. No.,Product Name,Input Image Urls,Output Image Urls")
    assert "Mug" in output

    card.get_by_role("link").click()
    expect(page.locator("#request-page")).to_be_visible()
    expect(page.get_by_role("cell", name="Bowl")).to_be_visible()
    expect(page.locator("#images")).to_contain_text("http_error: HTTP 404")
    expect(page.locator("#images")).to_contain_text("original kept, without metadata")
    expect(page.locator("#request-summary")).to_contain_text("quality 60 · effort max")
    thumbnail = page.locator("img.after").first
    expect(thumbnail).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.after')]"
        ".some(img => img.complete && img.naturalWidth > 0)"
    )
    expect(page.get_by_role("button", name="Retry failed images")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()


def test_variants_are_asked_for_and_each_shown_with_its_size(
    page: Any, make_service: ServiceFactory, image_server: ImageServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service = make_service()
    (photo,) = image_server.photo_urls(1, tag="web-variants-")
    csv_path = write_products(tmp_path, f"1,Mug,{photo}")
    page.goto(f"{service.base_url}/")
    page.get_by_label("Products CSV").set_input_files(str(csv_path))
    page.get_by_label("Variants").fill("zoom=2000:jpeg, listing=800:avif, thumb=200x200:pad:webp")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-message")).to_contain_text("Accepted: 1 images")

    card = page.locator("li.request").first
    expect(card).to_have_attribute("data-status", "completed")
    card.get_by_role("link").click()
    summary = page.locator("#request-summary")
    expect(summary.get_by_role("list", name="variants")).to_contain_text("thumb=200x200:pad:webp")
    figures = page.locator("#images figure.variant")
    expect(figures).to_have_count(3)
    expect(figures.nth(0)).to_contain_text("zoom: 1600\u00d71200")
    expect(figures.nth(1)).to_contain_text("listing: 800\u00d7600")
    expect(figures.nth(2)).to_contain_text("thumb: 200\u00d7200")
    # Each is shown: the browser decoded the JPEG, the AVIF and the WebP.
    page.wait_for_function(
        "() => [...document.querySelectorAll('figure.variant img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )


def test_a_bad_variants_spec_is_explained(
    page: Any, make_service: ServiceFactory, image_server: ImageServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service = make_service()
    csv_path = write_products(tmp_path, f"1,Mug,{image_server.photo_urls(1)[0]}")
    page.goto(f"{service.base_url}/")
    page.get_by_label("Products CSV").set_input_files(str(csv_path))
    page.get_by_label("Variants").fill("zoom=2000:gif")
    page.get_by_role("button", name="Upload").click()
    message = page.locator("#upload-message")
    expect(message).to_contain_text("'gif' is none of")
    expect(message).to_have_class("message error")


def test_a_bad_file_is_explained_row_by_row(
    page: Any, make_service: ServiceFactory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service = make_service()
    csv_path = write_products(
        tmp_path, "1,A,ftp://example.com/a.jpg", "2,,https://example.com/b.jpg"
    )
    page.goto(f"{service.base_url}/")
    page.get_by_label("Products CSV").set_input_files(str(csv_path))
    page.get_by_role("button", name="Upload").click()
    message = page.locator("#upload-message")
    expect(message).to_contain_text("row 2, Input Image Urls: 'ftp://example.com/a.jpg'")
    expect(message).to_contain_text("row 3, Product Name")
    expect(message).to_have_class("message error")


def test_with_api_keys_the_page_asks_for_one_and_uses_it(
    page: Any, make_service: ServiceFactory
) -> None:
    from playwright.sync_api import expect

    key = "web-key-" + "k" * 24
    service = make_service(API_KEYS=key)
    page.goto(f"{service.base_url}/")
    expect(page.locator("#list-message")).to_contain_text("needs an API key")
    page.get_by_label("API key, if this server asks for one").fill(key)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#list-message")).to_contain_text("No requests yet")


def test_the_page_fits_a_phone(page: Any, service: Any) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(f"{service.base_url}/")
    page.get_by_role("button", name="Upload").wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0  # nothing wider than the screen


def test_a_rerun_shows_what_was_reused_and_the_box_makes_every_image_again(
    page: Any, make_service: ServiceFactory, image_server: ImageServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service = make_service()
    a, b = image_server.photo_urls(2, tag="web-rerun-")
    csv_path = write_products(tmp_path, f'1,Mug,"{a},{b}"')
    page.goto(f"{service.base_url}/")
    for upload in range(2):
        page.get_by_label("Products CSV").set_input_files(str(csv_path))
        page.get_by_role("button", name="Upload").click()
        expect(page.locator("#upload-message")).to_contain_text("Accepted: 2 images")
        expect(page.locator("li.request")).to_have_count(upload + 1)
        expect(page.locator("li.request").first).to_have_attribute("data-status", "completed")
    card = page.locator("li.request").first
    expect(card).to_contain_text("2 unchanged since the last run, reused")
    card.get_by_role("link").click()
    expect(page.locator("#images")).to_contain_text("unchanged, reused")

    page.goto(f"{service.base_url}/")
    page.get_by_label("Products CSV").set_input_files(str(csv_path))
    page.get_by_label("Make every image again").check()
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("li.request")).to_have_count(3)
    newest = page.locator("li.request").first
    expect(newest).to_have_attribute("data-status", "completed")
    expect(newest).not_to_contain_text("reused")


def test_a_marketplace_profile_shows_what_complies_and_what_was_found(
    page: Any, make_service: ServiceFactory, image_server: ImageServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    service = make_service()
    small, in_frame, not_white = (
        image_server.url(f"/marketplace/{name}")
        for name in ("small.jpg", "small_in_frame.jpg", "not_white.jpg")
    )
    csv_path = write_products(
        tmp_path, f"1,Bag,{small}", f"2,Bulbs,{in_frame}", f"3,Bulb,{not_white}"
    )
    page.goto(f"{service.base_url}/")
    page.get_by_label("Products CSV").set_input_files(str(csv_path))
    page.get_by_label("Marketplace (optional)").select_option("amazon")
    page.get_by_label("Variants").fill("thumb=200x200:pad:webp")
    page.screenshot(path=str(tmp_path / "profile-form.png"), full_page=True)
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-message")).to_contain_text("Accepted: 3 images")

    card = page.locator("li.request").first
    expect(card).to_have_attribute("data-status", "completed")
    # small.jpg is under Amazon's zoom size and not_white.jpg's sweep cannot be lifted to
    # white: both are reported. small_in_frame.jpg is cropped to fill, so it complies.
    expect(card).to_contain_text("1 compliant, 2 not compliant with amazon")
    with page.expect_download() as download:
        card.get_by_role("button", name="Download CSV").click()
    header, *rows = csv.reader(io.StringIO(Path(download.value.path()).read_text()))
    assert header[-1] == "Compliance"
    compliance = {row[1]: row[-1] for row in rows}
    assert compliance["Bulbs"] == "compliant"
    assert compliance["Bag"].startswith("not compliant: ")
    assert compliance["Bulb"].startswith("not compliant: ")

    card.get_by_role("link").click()
    expect(page.locator("#request-summary")).to_contain_text("marketplace amazon")
    images = page.locator("#images")
    expect(images.get_by_role("list", name="findings for row 1")).to_contain_text(
        "too_small_for_zoom"
    )
    expect(images.get_by_role("list", name="findings for row 3")).to_contain_text(
        "background_not_white"
    )
    expect(images.locator("ul.findings")).to_have_count(2)
    expect(images.get_by_role("list", name="findings for row 2")).to_have_count(0)
    thumbs = images.locator("figure.variant", has_text="thumb: 200\u00d7200")
    expect(thumbs).to_have_count(3)
    expect(thumbs.first).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('figure.variant img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    page.screenshot(path=str(tmp_path / "profile-request.png"), full_page=True)


def test_the_form_lists_the_marketplaces(page: Any, service: Any) -> None:
    page.goto(f"{service.base_url}/")
    select = page.get_by_label("Marketplace (optional)")
    values = select.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert values == ["", "amazon", "walmart", "google", "ebay"]
