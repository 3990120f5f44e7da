"""`imgcrunch submit | status | download`: a running server's API, for scripts and CI pipelines.

Standard output carries what a script wants (the request id, the status JSON, the path written);
progress, summaries and errors go to standard error. Exit codes as for `imgcrunch process`, and
3 when the server cannot be reached.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from imgcrunch import progress
from imgcrunch.exit_codes import OK, SOME_FAILED, UNREACHABLE, UNUSABLE

POLL_SECONDS = 0.5
ACTIVE = ("queued", "processing")


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    url: str
    api_key: str | None = None

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url.rstrip("/"), headers=headers, timeout=60)


class _Refused(Exception):
    """The server answered with an error; its message is already shown."""


def submit(
    server: Server,
    csv_path: Path,
    *,
    webhook_url: str | None,
    quality: int | None,
    effort: str | None,
    wait: bool,
    console: Console,
    variants: str | None = None,
    profile: str | None = None,
    refresh: bool = False,
) -> int:
    fields = (
        ("webhook_url", webhook_url),
        ("quality", quality),
        ("effort", effort),
        ("variants", variants),
        ("profile", profile),
        ("refresh", "true" if refresh else None),
    )
    form = {key: str(value) for key, value in fields if value}
    try:
        with server.client() as client, csv_path.open("rb") as csv_file:
            # Sent from the file, a piece at a time: a catalog's CSV is never in memory whole.
            answer = _ok(
                client.post(
                    "/upload", files={"file": (csv_path.name, csv_file, "text/csv")}, data=form
                ),
                console,
            )
            request_id = str(answer["request_id"])
            print(request_id, flush=True)
            if not wait:
                return OK
            return _wait(client, request_id, csv_path.name, console)
    except _Refused:
        return UNUSABLE
    except httpx.TransportError as error:
        return _unreachable(server, error, console)


def status(server: Server, request_id: str, console: Console) -> int:
    try:
        with server.client() as client:
            body = _ok(client.get(f"/status/{request_id}"), console)
    except _Refused:
        return UNUSABLE
    except httpx.TransportError as error:
        return _unreachable(server, error, console)
    print(json.dumps(body, indent=2))
    return OK


def download(server: Server, request_id: str, output: Path | None, console: Console) -> int:
    target = output or Path(f"imgcrunch-{request_id}.csv")
    try:
        with server.client() as client:
            response = client.get(f"/download/{request_id}")
            if response.status_code != 200:
                _ok(response, console)
    except _Refused:
        return UNUSABLE
    except httpx.TransportError as error:
        return _unreachable(server, error, console)
    target.write_bytes(response.content)
    print(target)
    return OK


def _wait(client: httpx.Client, request_id: str, label: str, console: Console) -> int:
    started = time.monotonic()
    with progress.progress_bar(console, label) as bar:
        while True:
            body = _ok(client.get(f"/status/{request_id}"), console)
            snapshot = _snapshot(body)
            bar.show(snapshot)
            if body["status"] not in ACTIVE:
                break
            time.sleep(POLL_SECONDS)
    progress.summary(
        console,
        snapshot,
        seconds=time.monotonic() - started,
        output=body.get("output_csv_url"),
        failures=[
            progress.FailedImage(row=e["row"], url=e["url"], code=e["code"], message=e["message"])
            for e in body["errors"]
        ],
        more_failures=snapshot.failed - len(body["errors"]),
        variants=_variants(body),
    )
    if body["status"] == "completed":
        return OK
    return SOME_FAILED if body["status"] == "completed_with_errors" else UNUSABLE


def _snapshot(body: dict[str, Any]) -> progress.Snapshot:
    counts = body["progress"]
    return progress.Snapshot(
        status=body["status"],
        total=counts["total"],
        done=counts["done"],
        failed=counts["failed"],
        bytes_in=body["bytes_in"],
        bytes_out=body["bytes_out"],
        reused=counts.get("reused", 0),
        non_compliant=counts.get("non_compliant"),
    )


def _variants(body: dict[str, Any]) -> list[progress.VariantFigures]:
    """What each variant made; none shown for a request that named none (one default JPEG)."""
    variants = body.get("variants") or []
    if [variant["name"] for variant in variants] == ["output"]:
        return []
    return [progress.VariantFigures(v["spec"], v["bytes_out"]) for v in variants]


def _ok(response: httpx.Response, console: Console) -> dict[str, Any]:
    if response.is_success:
        body: dict[str, Any] = response.json()
        return body
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"code": str(response.status_code), "message": response.text[:500], "details": []}
    console.print(f"[red]{response.status_code} {error['code']}: {error['message']}[/red]")
    for detail in error.get("details") or []:
        where = ", ".join(
            f"{name} {detail[name]}" for name in ("row", "column", "field") if detail.get(name)
        )
        console.print(f"  {where}: {detail.get('reason')}")
    raise _Refused


def _unreachable(server: Server, error: httpx.TransportError, console: Console) -> int:
    console.print(f"[red]cannot reach {server.url}: {error}[/red]")
    return UNREACHABLE
