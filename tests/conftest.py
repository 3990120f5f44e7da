"""The suite's fixtures and hooks live in tests/plugins, a module per concern."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "pytester",
    "tests.plugins.markers",
    "tests.plugins.origin",
    "tests.plugins.catalog_origin",
    "tests.plugins.receivers",
    "tests.plugins.services",
    "tests.plugins.stores",
    "tests.plugins.disks",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
