"""Log lines: text or JSON, each carrying the request and image it is about."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from imgcrunch import logs
from tests.plugins.origin import ImageServer
from tests.plugins.services import ServiceFactory


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_the_ids_of_their_own_task(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json")
    request = uuid.uuid4()
    log = logging.getLogger("imgcrunch.test")

    async def image(n: int) -> None:
        logs.image_id.set(n)
        await asyncio.sleep(0)
        log.info("image %d", n)

    async def batch() -> None:
        logs.request_id.set(request)
        await asyncio.gather(image(1), image(2))
        log.warning("batch done")

    asyncio.run(batch())
    log.info("outside")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    by_message = {line["message"]: line for line in lines}
    assert by_message["image 1"]["image_id"] == 1
    assert by_message["image 2"]["image_id"] == 2
    assert by_message["image 2"]["request_id"] == str(request)
    assert by_message["batch done"]["request_id"] == str(request)
    assert "image_id" not in by_message["batch done"]  # each image's id stayed in its task
    assert "request_id" not in by_message["outside"]
    assert by_message["batch done"]["level"] == "warning"


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_name_the_ids_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("text")
    logs.image_id.set(7)
    try:
        logging.getLogger("imgcrunch.test").info("hello")
    finally:
        logs.image_id.set(None)
    assert capsys.readouterr().err.rstrip().endswith("imgcrunch.test: hello [image_id=7]")


def test_the_service_logs_json_with_ids(
    make_service: ServiceFactory, image_server: ImageServer
) -> None:
    service = make_service(LOG_FORMAT="json")
    good, missing = image_server.photo_urls(1, tag="logs-")[0], image_server.url("/missing.jpg")
    response = service.upload(f'S. No,Product Name,Input Image Urls\n1,A,"{good},{missing}"\n')
    request_id = response.json()["request_id"]
    assert service.wait_until_finished(request_id)["status"] == "completed_with_errors"
    service.stop()
    lines = [json.loads(line) for line in service.log_path.read_text().splitlines() if line]
    assert any("POST /upload" in line["message"] for line in lines)  # uvicorn's, in JSON too
    [failed] = [line for line in lines if line["message"].startswith("image failed")]
    assert failed["message"] == "image failed: http_error: HTTP 404 Not Found"
    assert failed["request_id"] == request_id
    assert isinstance(failed["image_id"], int)
    finished = [line for line in lines if line["message"].endswith("completed_with_errors")]
    assert finished[0]["request_id"] == request_id
