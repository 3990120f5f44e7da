"""What the command line shows: the progress bar and the summary, as a person reads them."""

from __future__ import annotations

import pytest

from imgcrunch import progress
from imgcrunch.progress import FailedImage, Snapshot
from tests.terminal import recording_console, shown_rows


def snapshot(**changes: object) -> Snapshot:
    figures: dict[str, object] = {
        "status": "completed",
        "total": 10,
        "done": 8,
        "failed": 2,
        "bytes_in": 2_500_000,
        "bytes_out": 1_000_000,
    }
    return Snapshot(**(figures | changes))  # type: ignore[arg-type]


def test_the_bar_counts_finished_images_failed_ones_and_the_pace() -> None:
    screen, out = recording_console()
    with progress.progress_bar(screen, "products.csv") as bar:
        bar.show(snapshot(status="processing", done=3, failed=1))
        bar.show(snapshot(status="processing", done=6, failed=1))
    shown = out.getvalue()
    assert "products.csv" in shown
    assert "7/10" in shown  # done and failed both count as finished
    assert "1 failed" in shown
    assert "images/s" in shown


def test_a_total_not_known_yet_shows_no_count_to_reach() -> None:
    screen, out = recording_console()
    with progress.progress_bar(screen, "big.csv") as bar:
        bar.show(snapshot(status="queued", total=0, done=0, failed=0))
    assert "0/?" in out.getvalue()


def test_the_summary_gives_the_counts_sizes_savings_pace_and_output() -> None:
    screen, out = recording_console()
    progress.summary(screen, snapshot(), seconds=4.0, output="out/products.output.csv", failures=[])
    lines = shown_rows(out)
    for row in (
        "status completed",
        "images 10",
        "compressed 8",
        "failed 2",
        "bytes in 2.5 MB",
        "bytes out 1.0 MB",
        "saved 60.0%",
        "time 4.0 s (2.5 images/s)",
        "output CSV out/products.output.csv",
    ):
        assert any(row in line for line in lines), (row, lines)
    assert "failed images" not in out.getvalue()


def test_nothing_to_divide_by_leaves_out_savings_and_pace() -> None:
    screen, out = recording_console()
    empty = snapshot(status="failed", done=0, failed=0, bytes_in=0, bytes_out=0)
    progress.summary(screen, empty, seconds=0, output=None, failures=[])
    shown = out.getvalue()
    assert "saved" not in shown
    assert "images/s" not in shown
    assert "output CSV" not in shown


def test_failed_images_are_listed_and_the_rest_counted() -> None:
    screen, out = recording_console()
    failures = [
        FailedImage(
            row="3",
            url="https://cdn.example.com/a.jpg",
            code="http_error",
            message="HTTP 404 Not Found",
        ),
        FailedImage(row="7", url="https://cdn.example.com/b.jpg", code="timeout", message="slow"),
    ]
    progress.summary(
        screen, snapshot(failed=5), seconds=1, output=None, failures=failures, more_failures=3
    )
    shown = out.getvalue()
    assert "failed images" in shown
    for failure in failures:
        for text in (failure.row, failure.url, failure.code, failure.message):
            assert text in shown
    assert "... and 3 more: see the output CSV's Errors column" in shown


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1_000, "1.0 KB"),
        (1_536_000, "1.5 MB"),
        (999_999_999, "1,000.0 MB"),
        (1_000_000_000, "1.0 GB"),
        (12_345_000_000_000, "12,345.0 GB"),
    ],
)
def test_sizes_are_shown_in_decimal_units(count: int, shown: str) -> None:
    screen, out = recording_console()
    progress.summary(
        screen, snapshot(bytes_in=count, bytes_out=0), seconds=0, output=None, failures=[]
    )
    assert f"bytes in {shown}" in shown_rows(out)
