"""The shipped docker-compose.yml is a valid Compose file (no container engine runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no Compose client here (docker compose or docker-compose) to validate with")


def test_the_compose_file_is_valid_and_shares_one_images_volume() -> None:
    result = subprocess.run(
        [*compose_command(), "--file", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    resolved = result.stdout
    for service in ("api:", "worker:", "postgres:", "redis:", "migrate:"):
        assert f"\n  {service}\n" in resolved
    # migrate, api and worker all mount it (short syntax from Compose v1, long from v2)
    assert len(re.findall(r"- images:/data|source: images", resolved)) >= 3
    assert "IMGCRUNCH_QUEUE: celery" in resolved
