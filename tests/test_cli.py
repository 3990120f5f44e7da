"""The command line, through real subprocesses: `process` with no server, and `submit`,
`status` and `download` against a running one."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.plugins.origin import ImageServer
from tests.plugins.services import Service, ServiceFactory
from tests.products import write_products
from tests.service_process import free_port

pytestmark = pytest.mark.slow  # every test here runs the real command in a subprocess


def imgcrunch(
    *args: str,
    cwd: Path,
    python: tuple[str, ...] = (),
    environ: dict[str, str] | None = None,
    **settings: str,
) -> subprocess.CompletedProcess[str]:
    """The real command line; `python`: options for the interpreter itself (-X importtime);
    `environ`: more variables, not settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCRUNCH_")}
    env |= {"IMGCRUNCH_ALLOW_PRIVATE_NETWORKS": "true", "COLUMNS": "200"} | (environ or {})
    env |= {f"IMGCRUNCH_{key.upper()}": value for key, value in settings.items()}
    return subprocess.run(
        [sys.executable, *python, "-m", "imgcrunch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_process_compresses_a_csv_with_no_server(tmp_path: Path, image_server: ImageServer) -> None:
    a, b, c = image_server.photo_urls(3, tag="cli-")
    write_products(tmp_path, f'1,A,"{a},{b}"', f"2,B,{c}")
    done = imgcrunch("process", "products.csv", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for shown in ("3/3", "images/s", "ETA"):  # the progress bar
        assert shown in done.stderr
    for shown in ("compressed", "saved", "products.output.csv"):  # the summary table
        assert shown in done.stderr

    output = tmp_path / "out" / "products.output.csv"
    rows = list(csv.DictReader(io.StringIO(output.read_text())))
    assert [row["S. No."] for row in rows] == ["1", "2"]
    files = [url for row in rows for url in row["Output Image Urls"].split(",")]
    assert len(files) == 3
    for url in files:
        assert url.startswith((tmp_path / "out" / "images").as_uri())
        assert Path(url.removeprefix("file://")).read_bytes()[:3] == b"\xff\xd8\xff"
    assert not (tmp_path / "out" / "webhook-secret").exists()


def test_process_takes_an_effort_and_refuses_an_unknown_one(
    tmp_path: Path, image_server: ImageServer
) -> None:
    write_products(tmp_path, f"1,A,{image_server.photo_urls(1, tag='cli-effort-')[0]}")
    sizes = {}
    for effort in ("balanced", "max"):
        done = imgcrunch("process", "products.csv", "-o", effort, "--effort", effort, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        rows = list(
            csv.DictReader(io.StringIO((tmp_path / effort / "products.output.csv").read_text()))
        )
        sizes[effort] = int(rows[0]["Bytes Out"])
    assert sizes["max"] < sizes["balanced"]
    unknown = imgcrunch("process", "products.csv", "--effort", "fastest", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "invalid choice: 'fastest'" in unknown.stderr


def test_process_exits_1_when_an_image_failed_and_says_why(
    tmp_path: Path, image_server: ImageServer
) -> None:
    good = image_server.photo_urls(1, tag="cli-fail-")[0]
    missing = image_server.url("/missing.jpg")
    write_products(tmp_path, f'1,A,"{good},{missing}"')
    done = imgcrunch("process", "products.csv", "-o", "out", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "completed_with_errors" in done.stderr
    assert missing in done.stderr
    assert "http_error" in done.stderr


def test_process_exits_2_for_a_bad_csv_naming_rows(tmp_path: Path) -> None:
    write_products(tmp_path, "1,A,ftp://example.com/a.jpg", "2,,https://example.com/b.jpg")
    done = imgcrunch("process", "products.csv", "-o", "out", cwd=tmp_path)
    assert done.returncode == 2
    assert "row 2, Input Image Urls: 'ftp://example.com/a.jpg' is not an absolute" in done.stderr
    assert "row 3, Product Name" in done.stderr
    assert not (tmp_path / "out").exists()


def test_submit_wait_status_and_download_against_a_server(
    tmp_path: Path, make_service: ServiceFactory, image_server: ImageServer
) -> None:
    key = "cli-key-" + "k" * 24
    service: Service = make_service(API_KEYS=key)
    server = ["--server", service.base_url, "--api-key", key]
    url = image_server.photo_urls(1, tag="cli-submit-")[0]
    write_products(tmp_path, f"1,A,{url}")

    submitted = imgcrunch(
        "submit", "products.csv", "--wait", "--effort", "max", "--quality", "60", *server,
        cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.strip()
    assert "completed" in submitted.stderr

    status = imgcrunch("status", request_id, *server, cwd=tmp_path)
    assert status.returncode == 0
    body = json.loads(status.stdout)
    assert (body["status"], body["effort"], body["quality"]) == ("completed", "max", 60)

    downloaded = imgcrunch("download", request_id, *server, cwd=tmp_path)
    assert downloaded.returncode == 0
    written = tmp_path / downloaded.stdout.strip()
    assert written.name == f"imgcrunch-{request_id}.csv"
    assert url in written.read_text()

    refused = imgcrunch("status", request_id, "--server", service.base_url, cwd=tmp_path)
    assert refused.returncode == 2
    assert "401 unauthorized" in refused.stderr


def imported_modules(*args: str, cwd: Path) -> set[str]:
    """The modules a real `imgcrunch ...` run imports (python -X importtime's report)."""
    run = imgcrunch(*args, cwd=cwd, python=("-X", "importtime"))
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines}


def test_the_client_commands_load_neither_pyvips_nor_sqlalchemy(
    tmp_path: Path, service: Service, image_server: ImageServer
) -> None:
    # A CI step that only talks to a server starts at once and needs no image library.
    write_products(tmp_path, f"1,A,{image_server.photo_urls(1, tag='cli-light-')[0]}")
    server = ("--server", service.base_url)
    submitted = imgcrunch("submit", "products.csv", "--wait", *server, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    request_id = submitted.stdout.strip()
    for args in (
        ("submit", "products.csv", *server),
        ("status", request_id, *server),
        ("download", request_id, "-o", "out.csv", *server),
    ):
        modules = imported_modules(*args, cwd=tmp_path)
        assert "httpx" in modules  # the report is read right
        assert not modules & {"pyvips", "sqlalchemy", "aiohttp", "prometheus_client"}, args


def test_submit_without_waiting_and_without_a_server(
    tmp_path: Path, service: Service, image_server: ImageServer
) -> None:
    write_products(tmp_path, f"1,A,{image_server.photo_urls(1, tag='cli-nowait-')[0]}")
    submitted = imgcrunch("submit", "products.csv", "--server", service.base_url, cwd=tmp_path)
    assert submitted.returncode == 0
    request_id = submitted.stdout.strip()
    assert httpx.get(f"{service.base_url}/status/{request_id}").status_code == 200

    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = imgcrunch("submit", "products.csv", "--server", nowhere, cwd=tmp_path)
    assert unreachable.returncode == 3
    assert f"cannot reach {nowhere}" in unreachable.stderr


@pytest.mark.parametrize(
    ("missing", "command", "settings"),
    [
        ("asyncpg", "migrate", {"database_url": "postgresql+asyncpg://u@127.0.0.1:9/x"}),
        ("asyncpg", "serve", {"database_url": "postgresql+asyncpg://u@127.0.0.1:9/x"}),
        ("celery", "serve", {"queue": "celery"}),
        ("celery", "worker", {}),
    ],
)
def test_a_missing_extra_is_named_in_one_line(
    tmp_path: Path, missing: str, command: str, settings: dict[str, str]
) -> None:
    # A package of that name that cannot be imported: as if the extra were not installed.
    hidden = tmp_path / "hidden" / missing
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(f"raise ImportError('No module named {missing}')\n")
    result = imgcrunch(
        command,
        cwd=tmp_path,
        environ={"PYTHONPATH": str(tmp_path / "hidden")},
        data_dir=str(tmp_path / "var"),
        database_url=settings.get("database_url", ""),
        queue=settings.get("queue", "inline"),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no traceback
    assert "needs the scale-out extras: pip install 'imgcrunch[scale-out]'" in lines[0]


def test_a_misspelt_setting_is_named_at_start_not_ignored_in_silence(tmp_path: Path) -> None:
    result = imgcrunch(
        "migrate", cwd=tmp_path, data_dir=str(tmp_path / "var"), storage_ulr="s3://shop/images"
    )
    assert result.returncode == 0, result.stderr
    assert "IMGCRUNCH_STORAGE_ULR is not a setting of imgcrunch: ignored" in result.stderr
    assert "IMGCRUNCH_DATA_DIR" not in result.stderr
