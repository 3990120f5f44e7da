"""`imgcrunch process`'s engine, in-process: a CSV processed on this machine into a folder, with
no server. (tests/test_cli.py runs the command itself.)"""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import pytest
import pyvips

from imgcrunch.codec import Effort
from imgcrunch.config import Settings
from imgcrunch.exit_codes import OK, SOME_FAILED, UNUSABLE
from imgcrunch.local_run import LocalRun, process, settings_for
from tests.plugins.origin import ImageServer
from tests.products import write_products
from tests.terminal import recording_console

BASE = Settings(allow_private_networks=True, cpu_workers=2)


def test_everything_goes_to_the_output_folder_and_nothing_is_served(tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = settings_for(LocalRun(write_products(tmp_path), out), BASE)
    assert settings.storage_url == f"file://{out.resolve()}"
    assert settings.database_url == f"sqlite+aiosqlite:///{out.resolve() / 'imgcrunch.db'}"
    assert settings.public_base_url == out.resolve().as_uri()
    assert (settings.queue, settings.public_images_url) == ("inline", "")
    assert settings.webhook_secret != BASE.webhook_secret  # a throwaway: no file is made
    assert settings.allow_private_networks  # the rest is the environment's


def test_a_csv_is_processed_into_the_folder_with_file_urls(
    tmp_path: Path, image_server: ImageServer
) -> None:
    a, b, c = image_server.photo_urls(3, tag="local-run-")
    run = LocalRun(
        write_products(tmp_path, f'1,A,"{a},{b}"', f"2,B,{c}"), tmp_path / "out", quality=40
    )
    screen, shown = recording_console()
    assert process(run, BASE, screen) == OK
    assert "3/3" in shown.getvalue()

    written = tmp_path / "out" / "products.output.csv"
    assert f"output CSV {written}" in " ".join(shown.getvalue().replace("│", " ").split())
    rows = list(csv.DictReader(io.StringIO(written.read_text())))
    outputs = [url for row in rows for url in row["Output Image Urls"].split(",")]
    assert len(outputs) == 3
    for url in outputs:
        assert url.startswith((tmp_path / "out" / "images").resolve().as_uri() + "/")
        image = pyvips.Image.new_from_file(url.removeprefix("file://"))
        assert image.get("vips-loader") == "jpegload"
    assert not (tmp_path / "out" / "webhook-secret").exists()


def test_failed_images_exit_1_and_are_listed(tmp_path: Path, image_server: ImageServer) -> None:
    good = image_server.photo_urls(1, tag="local-run-failed-")[0]
    missing = image_server.url("/missing.jpg")
    run = LocalRun(write_products(tmp_path, f'1,A,"{good},{missing}"'), tmp_path / "out")
    screen, shown = recording_console()
    assert process(run, BASE, screen) == SOME_FAILED
    assert missing in shown.getvalue()
    assert "HTTP 404 Not Found" in shown.getvalue()


@pytest.mark.parametrize("effort", [Effort.BALANCED, Effort.MAX])
def test_quality_and_effort_are_the_run_s_own(
    tmp_path: Path, image_server: ImageServer, effort: Effort
) -> None:
    url = image_server.photo_urls(1, tag=f"local-run-{effort}-")[0]
    out = tmp_path / "out"
    run = LocalRun(write_products(tmp_path, f"1,A,{url}"), out, quality=30, effort=effort)
    assert process(run, BASE, recording_console()[0]) == OK
    with sqlite3.connect(out / "imgcrunch.db") as db:
        recorded = db.execute("SELECT quality, effort, status FROM requests").fetchall()
    assert recorded == [(30, effort.value, "completed")]


def test_variants_land_in_their_columns_and_the_summary_gives_each_one_s_bytes(
    tmp_path: Path, image_server: ImageServer
) -> None:
    url = image_server.photo_urls(1, tag="local-run-variants-")[0]
    out = tmp_path / "out"
    spec = "zoom=2000:jpeg, thumb=200x200:pad:webp"
    run = LocalRun(write_products(tmp_path, f"1,A,{url}"), out, variants=spec)
    screen, shown = recording_console()
    assert process(run, BASE, screen) == OK
    (row,) = csv.DictReader(io.StringIO((out / "products.output.csv").read_text()))
    zoom = pyvips.Image.new_from_file(row["Output Image Urls"].removeprefix("file://"))
    thumb = pyvips.Image.new_from_file(row["Thumb Image Urls"].removeprefix("file://"))
    assert (zoom.get("vips-loader"), zoom.width, zoom.height) == ("jpegload", 1600, 1200)
    assert (thumb.get("vips-loader"), thumb.width, thumb.height) == ("webpload", 200, 200)
    thumb_bytes = Path(row["Thumb Image Urls"].removeprefix("file://")).stat().st_size
    summary = " ".join(shown.getvalue().replace("│", " ").split())
    assert "variant zoom=2000x2000:inside:jpeg" in summary
    assert f"variant thumb=200x200:pad:webp {thumb_bytes / 1000:,.1f} KB" in summary


def test_a_profile_makes_the_output_column_and_the_summary_counts_what_does_not_comply(
    tmp_path: Path, image_server: ImageServer
) -> None:
    small, framed = (
        image_server.url(f"/marketplace/{n}") for n in ("small.jpg", "tiny_in_frame.jpg")
    )
    out = tmp_path / "out"
    csv_path = write_products(tmp_path, f"1,Bag,{small}", f"2,Bottle,{framed}")
    run = LocalRun(csv_path, out, profile="amazon", variants="thumb=100:webp")
    screen, shown = recording_console()
    assert process(run, BASE, screen) == OK  # findings are warnings: every image was made
    rows = list(csv.DictReader(io.StringIO((out / "products.output.csv").read_text())))
    assert [row["Compliance"].split(": ")[:3] for row in rows] == [
        ["not compliant", small, "too_small_for_zoom"],
        ["not compliant", framed, "product_fill_low"],
    ]
    bottle = pyvips.Image.new_from_file(rows[1]["Output Image Urls"].removeprefix("file://"))
    assert (bottle.width, bottle.height) == (500, 500)  # cropped round it, to Amazon's least
    summary = " ".join(shown.getvalue().replace("│", " ").split())
    assert "of which not compliant 2" in summary
    assert "see the output CSV's Compliance column" in summary


def test_a_bad_variants_spec_exits_2_naming_the_part_and_makes_nothing(tmp_path: Path) -> None:
    csv_path = write_products(tmp_path, "1,A,https://example.com/a.jpg")
    screen, shown = recording_console()
    run = LocalRun(csv_path, tmp_path / "out", variants="a=jpeg, a=webp")
    assert process(run, BASE, screen) == UNUSABLE
    assert "a: this name is given twice" in shown.getvalue()
    assert not (tmp_path / "out").exists()


def test_a_refused_csv_exits_2_naming_each_row_and_makes_nothing(tmp_path: Path) -> None:
    csv_path = write_products(
        tmp_path, "1,A,ftp://example.com/a.jpg", "2,,https://example.com/b.jpg"
    )
    screen, shown = recording_console()
    assert process(LocalRun(csv_path, tmp_path / "out"), BASE, screen) == UNUSABLE
    lines = shown.getvalue().splitlines()
    assert any(
        line.startswith("  row 2, Input Image Urls: 'ftp://example.com/a.jpg'") for line in lines
    )
    assert "  row 3, Product Name: the product name is empty" in lines
    assert not (tmp_path / "out").exists()


def test_a_second_run_into_the_same_folder_reuses_what_did_not_change(
    tmp_path: Path, image_server: ImageServer
) -> None:
    urls = image_server.photo_urls(3, tag="local-rerun-")
    products = write_products(tmp_path, f'1,A,"{",".join(urls)}"')
    screen, _ = recording_console()
    assert process(LocalRun(products, tmp_path / "out"), BASE, screen) == OK
    written = tmp_path / "out" / "products.output.csv"
    first = written.read_text()
    hits = sum(image_server.hits.values())

    screen, shown = recording_console()
    assert process(LocalRun(products, tmp_path / "out"), BASE, screen) == OK
    assert "of which reused (unchanged) 3" in " ".join(shown.getvalue().replace("│", " ").split())
    assert written.read_text() == first  # the same files, at the same URLs
    assert sum(image_server.hits.values()) == hits + 3  # fetched again: no validators sent

    screen, shown = recording_console()
    assert process(LocalRun(products, tmp_path / "out", refresh=True), BASE, screen) == OK
    assert "reused" not in shown.getvalue()
