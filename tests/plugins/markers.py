"""Which tests are slow, and which need a service; a skip of the latter fails in CI.

`slow`: a test that starts real processes (a service, Celery workers, a browser, an S3 server)
or waits on real timeouts. `pytest -m "not slow"` leaves them out, for a quick run while
working; `make test` runs all.

`needs_service`: a test that needs a server or a capability of the machine (PostgreSQL, Redis,
an S3 server, Chromium, root to mount a small disk). Where one is missing the test skips,
saying why; with IMGCRUNCH_REQUIRE_SERVICES=1 (CI) such a skip is a failure instead, however
it came about, so a missing service can never pass for a green run.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.servers import services_required

# Fixtures that start or reach a real process, by name.
_SLOW = frozenset({"service", "make_service", "scale_out", "page", "s3_server", "bucket"})
# Fixtures that need a service or a capability of the machine, and what it is.
_SERVICES = {
    "postgres": "PostgreSQL",
    "redis_server": "Redis",
    "s3_server": "an S3 server (SeaweedFS)",
    "private_redis": "redis-server",
    "private_postgres": "PostgreSQL's server binaries",
    "own_s3": "an S3 server (SeaweedFS)",
    "browser": "Chromium",
    "small_disk": "root, to mount a small file system",
}


def needed_services(item: pytest.Item) -> list[str]:
    names = set(getattr(item, "fixturenames", ()))
    needed = [what for fixture, what in _SERVICES.items() if fixture in names]
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("database_url") == "postgresql":
        needed.append("PostgreSQL")
    return needed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_service(what): needs a real service; a skip fails in CI"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SLOW & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        for what in needed_services(item):
            item.add_marker(pytest.mark.needs_service(what))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    marker = item.get_closest_marker("needs_service")
    skipped = report.skipped and not hasattr(report, "wasxfail")
    if skipped and marker is not None and services_required():
        said = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped ({said.removeprefix('Skipped: ')}), but this test needs {marker.args[0]} and "
            "IMGCRUNCH_REQUIRE_SERVICES=1 says every service must be there"
        )
    return report
