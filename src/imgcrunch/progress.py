"""What the command line shows people: a progress bar while images are processed, and a summary.

Fed with the same figures whether the images are processed here (`imgcrunch process`) or by a
server (`imgcrunch submit --wait`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Snapshot:
    status: str
    total: int
    done: int
    failed: int
    bytes_in: int
    bytes_out: int
    reused: int = 0  # of the done: unchanged since the last request, outputs reused
    # Of the done, with a marketplace profile: with findings (rules not met); None: no profile.
    non_compliant: int | None = None


@dataclass(frozen=True, slots=True)
class VariantFigures:
    spec: str  # e.g. thumb=200x200:pad:webp
    bytes_out: int


@dataclass(frozen=True, slots=True)
class FailedImage:
    row: str
    url: str
    code: str
    message: str


class Bar:
    """A progress bar with images/s and the time left; `show` it each time figures come in."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task
        self._started = time.monotonic()

    def show(self, snapshot: Snapshot) -> None:
        finished = snapshot.done + snapshot.failed
        elapsed = time.monotonic() - self._started
        rate = finished / elapsed if elapsed > 0 else 0.0
        self._progress.update(
            self._task,
            total=snapshot.total or None,
            completed=finished,
            rate=f"{rate:5.1f}",
            failed=snapshot.failed,
        )


@contextmanager
def progress_bar(console: Console, label: str) -> Iterator[Bar]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(label, total=None, rate="    -", failed=0)
        yield Bar(progress, task)


def summary(
    console: Console,
    snapshot: Snapshot,
    *,
    seconds: float,
    output: str | None,
    failures: Sequence[FailedImage],
    more_failures: int = 0,
    variants: Sequence[VariantFigures] = (),
) -> None:
    """`variants`: what each variant made, when the request named its variants."""
    table = Table(title="imgcrunch", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("status", snapshot.status)
    table.add_row("images", f"{snapshot.total:,}")
    table.add_row("compressed", f"{snapshot.done:,}")
    if snapshot.reused:
        table.add_row("of which reused (unchanged)", f"{snapshot.reused:,}")
    if snapshot.non_compliant is not None:
        table.add_row("of which not compliant", f"{snapshot.non_compliant:,}")
    table.add_row("failed", f"{snapshot.failed:,}")
    table.add_row("bytes in", _size(snapshot.bytes_in))
    table.add_row("bytes out", _size(snapshot.bytes_out))
    if snapshot.bytes_in:
        table.add_row("saved", f"{100 * (1 - snapshot.bytes_out / snapshot.bytes_in):.1f}%")
    for variant in variants:
        table.add_row(f"variant {variant.spec}", _size(variant.bytes_out))
    if seconds > 0:
        finished = snapshot.done + snapshot.failed
        table.add_row("time", f"{seconds:.1f} s ({finished / seconds:.1f} images/s)")
    if output:
        table.add_row("output CSV", output)
    console.print(table)
    if failures:
        failed = Table(title="failed images", title_justify="left")
        for column in ("row", "URL", "code", "reason"):
            failed.add_column(column, overflow="fold")
        for image in failures:
            failed.add_row(image.row, image.url, image.code, image.message)
        console.print(failed)
        if more_failures:
            console.print(f"... and {more_failures} more: see the output CSV's Errors column")
    if snapshot.non_compliant:
        console.print(
            f"{snapshot.non_compliant:,} images do not meet every rule of the profile: "
            "see the output CSV's Compliance column"
        )


def _size(count: int) -> str:
    if count < 1000:
        return f"{count:,} B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6)):
        if count < scale * 1000:
            return f"{count / scale:,.1f} {unit}"
    return f"{count / 1e9:,.1f} GB"
