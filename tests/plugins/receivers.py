"""A webhook receiver over real HTTP that answers from a script and records every request it
gets, whatever its method (a redirect followed by mistake arrives as a GET)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from imgcrunch.signing import WebhookVerificationError, verify
from tests.local_http import Handler, QuietServer, serve
from tests.waiting import wait_until


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got, and how it answered."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # time.monotonic()
    answer: str
    verified: bool  # signed with the receiver's secret, over this body, recently
    event: Any  # the parsed event, when verified

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class Receiver:
    """`script`: the answers, in turn, the last one for good:
    "204", "500"...   that status
    "timeout"         an answer 2 s late: longer than the service's webhook timeout in tests
    "429:1"           that status with Retry-After: 1
    "302:<url>"       a redirect to <url>
    """

    url: str = ""
    script: list[str] = field(default_factory=lambda: ["204"])
    secret: str = ""  # when set, every delivery is checked with it
    deliveries: list[Delivery] = field(default_factory=list)

    @property
    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.answer.startswith("2")]

    def wait_for_deliveries(self, count: int, *, timeout: float = 60) -> list[Delivery]:
        """The first `count` deliveries, once they have come; AssertionError if they do not."""
        wait_until(
            f"{count} webhook deliveries", lambda: len(self.deliveries) >= count, timeout=timeout
        )
        return self.deliveries[:count]

    def next_answer(self) -> str:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def _receiver_handler(receiver: Receiver) -> type[Handler]:
    class ReceiverHandler(Handler):
        def do_POST(self) -> None:
            self._answer()

        def do_GET(self) -> None:
            self._answer()

        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                event, verified = verify(body, headers, receiver.secret), True
            except (WebhookVerificationError, ValueError):
                event, verified = None, False
            answer = receiver.next_answer()
            receiver.deliveries.append(
                Delivery(
                    self.command,
                    self.path,
                    headers,
                    body,
                    time.monotonic(),
                    answer,
                    verified,
                    event,
                )
            )
            if answer == "timeout":
                time.sleep(2)
                answer = "204"
            code, _, extra = answer.partition(":")
            status = int(code)
            if status in (429, 503) and extra:
                self.send(status, headers={"Retry-After": extra})
            elif 300 <= status < 400:
                self.send(status, headers={"Location": extra})
            else:
                self.send(status)

    return ReceiverHandler


def start_receiver(receiver: Receiver, port: int = 0) -> QuietServer:
    """Serve `receiver` on 127.0.0.1 (on `port`, if given); its `url` is set to the server's."""
    server = serve(_receiver_handler(receiver), port)
    receiver.url = f"{server.base_url}/hooks/imgcrunch"
    return server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver that accepts everything (204), until its script says otherwise."""
    receiver = Receiver()
    server = start_receiver(receiver)
    yield receiver
    server.stop()
