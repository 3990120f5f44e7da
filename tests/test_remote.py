"""The API client behind `imgcrunch submit | status | download`: against a real service, and
against a scripted HTTP server for the answers a real one gives only when things go wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from imgcrunch import remote
from imgcrunch.exit_codes import OK, SOME_FAILED, UNREACHABLE, UNUSABLE
from tests.local_http import Handler, serve
from tests.plugins.origin import ImageServer
from tests.plugins.services import Service, ServiceFactory
from tests.products import write_products
from tests.service_process import free_port
from tests.terminal import recording_console

REQUEST_ID = "5c0e5c0e-0000-4000-8000-000000000003"


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "POLL_SECONDS", 0.05)


def submit(
    server: remote.Server,
    csv_path: Path,
    screen: Console,
    *,
    wait: bool = True,
    webhook_url: str | None = None,
    quality: int | None = None,
    effort: str | None = None,
    variants: str | None = None,
    profile: str | None = None,
) -> int:
    return remote.submit(
        server,
        csv_path,
        webhook_url=webhook_url,
        quality=quality,
        effort=effort,
        variants=variants,
        profile=profile,
        wait=wait,
        console=screen,
    )


# --- against a real service -----------------------------------------------------------------


def test_submit_and_wait_prints_the_id_shows_progress_and_exits_0(
    service: Service,
    image_server: ImageServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = image_server.photo_urls(2, tag="remote-ok-")
    screen, shown = recording_console()
    code = submit(
        remote.Server(url=service.base_url + "/"),  # a trailing slash is fine
        write_products(tmp_path, f'1,A,"{a},{b}"'),
        screen,
        quality=60,
        effort="max",
    )
    assert code == OK
    request_id = capsys.readouterr().out.strip()
    status = service.status(request_id)
    assert (status["status"], status["quality"], status["effort"]) == ("completed", 60, "max")
    assert "2/2" in shown.getvalue()
    assert f"{service.base_url}/download/{request_id}" in shown.getvalue()


def test_submit_sends_the_variants_and_the_summary_gives_each_one_s_bytes(
    service: Service, image_server: ImageServer, tmp_path: Path
) -> None:
    (url,) = image_server.photo_urls(1, tag="remote-variants-")
    screen, shown = recording_console()
    csv_path = write_products(tmp_path, f"1,A,{url}")
    code = submit(remote.Server(url=service.base_url), csv_path, screen, variants="s=64:avif")
    assert code == OK
    with service.client() as client:
        listed = client.get("/requests").json()["requests"]
    (request,) = [r for r in listed if r["variants"][0]["spec"] == "s=64x64:inside:avif"]
    made = request["variants"][0]["bytes_out"]
    shown_size = f"{made:,} B" if made < 1000 else f"{made / 1000:,.1f} KB"
    summary = " ".join(shown.getvalue().replace("│", " ").split())
    assert f"variant s=64x64:inside:avif {shown_size}" in summary


def test_submit_sends_the_profile_and_the_summary_counts_what_does_not_comply(
    service: Service, image_server: ImageServer, tmp_path: Path
) -> None:
    csv_path = write_products(tmp_path, f"1,A,{image_server.url('/marketplace/tiny.jpg')}")
    screen, shown = recording_console()
    assert submit(remote.Server(url=service.base_url), csv_path, screen, profile="ebay") == OK
    summary = " ".join(shown.getvalue().replace("│", " ").split())
    assert "of which not compliant 1" in summary
    with service.client() as client:
        listed = client.get("/requests").json()["requests"]
    assert listed[0]["profile"] == "ebay"
    assert listed[0]["progress"]["non_compliant"] == 1


def test_some_images_failed_exits_1_listing_them_and_counting_the_rest(
    make_service: ServiceFactory,
    image_server: ImageServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = make_service(ERRORS_IN_STATUS="1")  # the status lists one failure of the two
    good = image_server.photo_urls(1, tag="remote-some-")[0]
    missing, broken = image_server.url("/missing.jpg"), image_server.url("/error.jpg")
    screen, shown = recording_console()
    code = submit(
        remote.Server(url=service.base_url),
        write_products(tmp_path, f'1,A,"{good},{missing}"', f"2,B,{broken}"),
        screen,
    )
    assert code == SOME_FAILED
    assert "completed_with_errors" in shown.getvalue()
    assert "http_error" in shown.getvalue()
    assert "... and 1 more: see the output CSV's Errors column" in shown.getvalue()


def test_status_prints_the_status_and_download_writes_the_csv(
    service: Service,
    image_server: ImageServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = image_server.photo_urls(1, tag="remote-status-")[0]
    request_id = service.upload(f"S. No,Product Name,Input Image Urls\n1,A,{url}\n").json()[
        "request_id"
    ]
    service.wait_until_finished(request_id)
    server = remote.Server(url=service.base_url)
    screen, _ = recording_console()

    assert remote.status(server, request_id, screen) == OK
    assert json.loads(capsys.readouterr().out)["status"] == "completed"

    monkeypatch.chdir(tmp_path)
    assert remote.download(server, request_id, None, screen) == OK
    written = tmp_path / f"imgcrunch-{request_id}.csv"
    assert capsys.readouterr().out.strip() == written.name
    assert url in written.read_text()
    assert remote.download(server, request_id, tmp_path / "named.csv", screen) == OK
    assert (tmp_path / "named.csv").read_bytes() == written.read_bytes()


# --- against a scripted server ----------------------------------------------------------------


@dataclass
class ScriptedApi:
    """Answers each path with a status and body of the test's choosing; records the requests."""

    url: str = ""
    answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    asked: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def answer(self, path: str, status: int, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[path] = (status, data)


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    state = ScriptedApi()

    class ApiHandler(Handler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._answer()

        def _answer(self) -> None:
            state.asked.append((self.command, self.path, dict(self.headers.items())))
            status, body = state.answers.get(self.path, (404, b"{}"))
            kind = "application/json" if body.startswith((b"{", b"[")) else "text/plain"
            self.send(status, body, kind)

    server = serve(ApiHandler)
    state.url = server.base_url
    yield state
    server.stop()


def test_a_refused_file_exits_2_naming_each_row_and_column(
    api: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answer(
        "/upload",
        422,
        {
            "error": {
                "code": "invalid_rows",
                "message": "2 problems in 2 rows",
                "details": [
                    {"row": 3, "column": "Product Name", "reason": "the product name is empty"},
                    {"field": "quality", "reason": "at most 100"},
                ],
            }
        },
    )
    screen, shown = recording_console()
    code = submit(
        remote.Server(url=api.url, api_key="k" * 20),
        write_products(tmp_path, "1,,https://example.com/a.jpg"),
        screen,
        webhook_url="https://hooks.example.com/x",
        quality=101,
    )
    assert code == UNUSABLE
    assert capsys.readouterr().out == ""  # no request id: nothing was accepted
    lines = shown.getvalue().splitlines()
    assert lines[0] == "422 invalid_rows: 2 problems in 2 rows"
    assert "  row 3, column Product Name: the product name is empty" in lines
    assert "  field quality: at most 100" in lines
    [(method, path, headers)] = api.asked
    assert (method, path) == ("POST", "/upload")
    assert headers["Authorization"] == f"Bearer {'k' * 20}"


def test_an_answer_that_is_not_the_api_s_error_shape_is_shown_as_it_came(
    api: ScriptedApi,
) -> None:
    api.answer(f"/status/{REQUEST_ID}", 502, b"Bad Gateway from the proxy")
    screen, shown = recording_console()
    assert remote.status(remote.Server(url=api.url), REQUEST_ID, screen) == UNUSABLE
    assert "502 502: Bad Gateway from the proxy" in shown.getvalue()


def test_a_request_that_failed_exits_2_after_waiting(
    api: ScriptedApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.answer("/upload", 202, {"request_id": REQUEST_ID, "status": "queued"})
    api.answer(
        f"/status/{REQUEST_ID}",
        200,
        {
            "status": "failed",
            "progress": {"total": 3, "done": 0, "failed": 0},
            "bytes_in": 0,
            "bytes_out": 0,
            "errors": [],
            "output_csv_url": None,
        },
    )
    screen, _ = recording_console()
    code = submit(
        remote.Server(url=api.url),
        write_products(tmp_path, "1,A,https://example.com/a.jpg"),
        screen,
    )
    assert code == UNUSABLE
    assert capsys.readouterr().out.strip() == REQUEST_ID


def test_a_download_refused_writes_no_file(
    api: ScriptedApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.answer(
        f"/download/{REQUEST_ID}",
        409,
        {"error": {"code": "not_ready", "message": "processing", "details": []}},
    )
    monkeypatch.chdir(tmp_path)
    screen, shown = recording_console()
    assert remote.download(remote.Server(url=api.url), REQUEST_ID, None, screen) == UNUSABLE
    assert "409 not_ready: processing" in shown.getvalue()
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_cannot_be_reached_exits_3(tmp_path: Path) -> None:
    nowhere = remote.Server(url=f"http://127.0.0.1:{free_port()}")
    screen, shown = recording_console()
    assert remote.status(nowhere, REQUEST_ID, screen) == UNREACHABLE
    assert remote.download(nowhere, REQUEST_ID, tmp_path / "x.csv", screen) == UNREACHABLE
    code = submit(
        nowhere,
        write_products(tmp_path, "1,A,https://example.com/a.jpg"),
        screen,
        wait=False,
    )
    assert code == UNREACHABLE
    assert shown.getvalue().count(f"cannot reach {nowhere.url}") == 3
    assert not (tmp_path / "x.csv").exists()
