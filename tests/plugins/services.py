"""`imgcrunch serve` as real processes (tests/service_process.py), and what they report."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service_process import ServiceProcess

Service = ServiceProcess
ServiceFactory = Callable[..., Service]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """A Prometheus endpoint's samples, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(url).text)
        for sample in family.samples
    }


def _new_service(data_dir: Path, settings: dict[str, str]) -> Service:
    # Short timeouts: the test origins answer at once, or are meant not to.
    quick = {"IMGCRUNCH_READ_TIMEOUT": "2", "IMGCRUNCH_FETCH_TIMEOUT": "5"}
    named = {f"IMGCRUNCH_{key.upper()}": value for key, value in settings.items()}
    return ServiceProcess.on_loopback(data_dir, quick | named)


@pytest.fixture
def make_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceFactory]:
    """`make_service(**settings)`: a service of this test's own, started, with these settings
    (names without IMGCRUNCH_); stopped at the end of the test."""
    services: list[Service] = []

    def make(**settings: str) -> Service:
        service = _new_service(tmp_path_factory.mktemp("service"), settings)
        services.append(service)
        service.start()
        return service

    yield make
    for service in services:
        service.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One shared service for tests that only add requests of their own."""
    shared = _new_service(tmp_path_factory.mktemp("shared-service"), {})
    shared.start()
    yield shared
    shared.stop()
