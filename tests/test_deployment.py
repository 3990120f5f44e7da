"""The shipped docker-compose.yml is a valid Compose file (no container engine runs here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from imgcrunch.signing import new_secret

ROOT = Path(__file__).resolve().parent.parent


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("no Compose client here (docker compose or docker-compose) to validate with")


def test_the_compose_file_is_valid_and_shares_no_folder() -> None:
    result = subprocess.run(
        [*compose_command(), "--file", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=os.environ | {"IMGCRUNCH_WEBHOOK_SECRET": new_secret()},
    )
    assert result.returncode == 0, result.stderr
    resolved = result.stdout
    for service in ("api:", "worker:", "postgres:", "redis:", "migrate:", "s3:"):
        assert f"\n  {service}\n" in resolved
    assert "IMGCRUNCH_QUEUE: celery" in resolved
    assert "IMGCRUNCH_STORAGE_URL: s3://" in resolved
    assert not re.findall(r"- images:/data|source: images", resolved)  # the bucket, no volume
