"""The suite's own rule (tests/plugins/markers.py): where a test needs a service, a skip is a
failure in CI, so a missing service never passes for a green run."""

from __future__ import annotations

import pytest

NEEDS_POSTGRES = """
import pytest

@pytest.fixture
def postgres():
    pytest.skip("PostgreSQL is not available here")

def test_with_a_database(postgres):
    pass

def test_without_one():
    pytest.skip("nothing to do with a service")

@pytest.mark.xfail(reason="known")
def test_expected_to_fail(postgres):
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_needs=NEEDS_POSTGRES)
    return pytester


def test_a_test_that_needs_a_service_skips_saying_why(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMGCRUNCH_REQUIRE_SERVICES", raising=False)
    result = suite.runpytest("-p", "tests.plugins.markers", "-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["*SKIPPED*PostgreSQL is not available here*"])


def test_with_services_required_the_skip_fails_and_only_that_one(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGCRUNCH_REQUIRE_SERVICES", "1")
    result = suite.runpytest("-p", "tests.plugins.markers")
    # The tests that need PostgreSQL fail where they skipped (in their set-up), the one marked
    # xfail too: its skip was the service's, not its expected failure. A skip that has
    # nothing to do with a service stays a skip.
    result.assert_outcomes(skipped=1, errors=2)
    result.stdout.fnmatch_lines(
        ["*skipped (PostgreSQL is not available here), but this test needs PostgreSQL*"]
    )
