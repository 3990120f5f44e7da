"""One catalog sent with a marketplace profile and variants, and what a user checks of it, the
same in either mode: the status's counts, each image's findings, the output CSV's Compliance
column, and every served image against tests/marketplace_checker."""

from __future__ import annotations

import csv
import io

import httpx

from tests import marketplace_checker
from tests.plugins.origin import ImageServer
from tests.plugins.services import Service

# Product, fixture, and what Amazon's profile cannot fix in it (the rest it fixes).
PRODUCTS: tuple[tuple[str, str, set[str]], ...] = (
    ("Bag", "small.jpg", {"too_small_for_zoom"}),
    ("Bulbs", "small_in_frame.jpg", set()),
    ("Bulb", "off_white.jpg", set()),
    ("Lamp", "not_white.jpg", {"background_not_white"}),
    ("Board", "four_by_three.jpg", set()),
)
VARIANTS = "thumb=200x200:pad:webp:4kb"
THUMB_CAP = 4000


def upload(service: Service, image_server: ImageServer) -> str:
    rows = [
        f"{n},{name},{image_server.url(f'/marketplace/{shot}')}"
        for n, (name, shot, _) in enumerate(PRODUCTS, start=1)
    ]
    response = service.upload(
        "S. No,Product Name,Input Image Urls\n" + "\n".join(rows) + "\n",
        profile="amazon",
        variants=VARIANTS,
    )
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


def check(service: Service, request_id: str) -> None:
    """Everything the user sees of the finished request is what the profile made and found."""
    status = service.wait_until_finished(request_id)
    assert status["status"] == "completed"
    assert status["profile"] == "amazon"
    expected_bad = sum(1 for _, _, found in PRODUCTS if found)
    assert status["progress"]["compliant"] == len(PRODUCTS) - expected_bad
    assert status["progress"]["non_compliant"] == expected_bad
    output, thumb = status["variants"]
    assert (output["name"], output["profile"], output["format"]) == ("output", "amazon", "jpeg")
    assert (thumb["name"], thumb["profile"], thumb["max_bytes"]) == ("thumb", None, THUMB_CAP)

    with service.client() as client:
        images = client.get(f"/requests/{request_id}/images").json()["images"]
        response = client.get(f"/download/{request_id}")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0])[-1] == "Compliance"
    for (name, _, found), image, row in zip(PRODUCTS, images, rows, strict=True):
        assert {finding["code"] for finding in image["findings"]} == found, name
        assert image["variants"][0]["quality"] is not None
        if found:
            assert row["Compliance"].startswith("not compliant: "), row
            assert all(f": {code}: " in row["Compliance"] for code in found)
        else:
            assert row["Compliance"] == "compliant", row
        served = httpx.get(row["Output Image Urls"]).content
        broken = marketplace_checker.rules_broken("amazon", served, row["Output Image Urls"])
        assert broken <= found, (name, broken, marketplace_checker.measure(served))
        thumbnail = httpx.get(row["Thumb Image Urls"]).content
        assert len(thumbnail) <= THUMB_CAP
        assert marketplace_checker.measure(thumbnail).format == "WEBP"
