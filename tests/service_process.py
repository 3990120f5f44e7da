"""`imgcrunch serve` as a real process on loopback, with its own data folder and port: the one
service runner that the tests and the benchmarks share.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.waiting import wait_until

LOG_TAIL_LINES = 40


class ServiceError(RuntimeError):
    """The service exited at start, or did not answer in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def loopback_env(data_dir: Path, port: int, settings: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without its IMGCRUNCH_* variables, then what a service on
    loopback needs, then `settings` (IMGCRUNCH_* names), which win."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("IMGCRUNCH_")}
    return env | {
        "IMGCRUNCH_DATA_DIR": str(data_dir),
        "IMGCRUNCH_PORT": str(port),
        "IMGCRUNCH_HOST": "127.0.0.1",
        "IMGCRUNCH_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "IMGCRUNCH_ALLOW_PRIVATE_NETWORKS": "true",  # its origins live on loopback too
        **settings,
    }


@dataclass
class ServiceProcess:
    data_dir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_loopback(cls, data_dir: Path, settings: Mapping[str, str]) -> ServiceProcess:
        port = free_port()
        return cls(data_dir, port, loopback_env(data_dir, port, settings))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "service.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as log:
            # cwd is the data folder, so a developer's .env in the repository does not apply.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "imgcrunch", "serve"],
                env=self.env,
                cwd=self.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until("/healthz to answer", self._healthy, timeout=timeout, interval=0.1)
        except AssertionError:
            raise ServiceError(
                f"the service did not answer /healthz within {timeout:g} s:\n" + self.log_tail()
            ) from None

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ServiceError(
                f"the service exited at start (code {self.process.returncode}):\n" + self.log_tail()
            )
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, and SIGKILL if it has not exited within `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def upload(self, csv_text: str | bytes, **form: str) -> httpx.Response:
        body = csv_text.encode() if isinstance(csv_text, str) else csv_text
        with self.client() as client:
            return client.post(
                "/upload", files={"file": ("products.csv", body, "text/csv")}, data=form
            )

    def status(self, request_id: str, *, key: str | None = None) -> dict[str, Any]:
        """GET /status/{request_id} (with this API key), answered 200."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with self.client() as client:
            response = client.get(f"/status/{request_id}", headers=headers)
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        return status

    def wait_until_done(
        self, request_id: str, at_least: int, timeout: float = 60.0, *, key: str | None = None
    ) -> dict[str, Any]:
        """The status, once at least `at_least` of the request's images are done."""

        def far_enough() -> dict[str, Any] | None:
            status = self.status(request_id, key=key)
            return status if status["progress"]["done"] >= at_least else None

        return wait_until(f"{at_least} images of {request_id} done", far_enough, timeout=timeout)

    def wait_until_finished(
        self, request_id: str, timeout: float = 60.0, *, key: str | None = None
    ) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            status = self.status(request_id, key=key)
            return None if status["status"] in ("queued", "processing") else status

        return wait_until(f"request {request_id} to finish", finished, timeout=timeout)
