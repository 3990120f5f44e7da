"""Settings from IMGCRUNCH_* variables and .env, with defaults that follow the data folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgcrunch.config import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("IMGCRUNCH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_work_on_a_fresh_machine() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:///var/imgcrunch.db"
    assert settings.storage_root == Path("var")
    assert settings.public_base_url == "http://localhost:8000"
    assert (settings.host, settings.port, settings.jpeg_quality) == ("127.0.0.1", 8000, 50)
    assert settings.allow_private_networks is False
    assert settings.cpu_workers >= 1


def test_a_second_instance_needs_only_a_data_dir_and_a_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGCRUNCH_DATA_DIR", "/srv/two")
    monkeypatch.setenv("IMGCRUNCH_PORT", "8001")
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:////srv/two/imgcrunch.db"
    assert settings.storage_root == Path("/srv/two")
    assert settings.public_base_url == "http://localhost:8001"


def test_explicit_values_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "IMGCRUNCH_PUBLIC_BASE_URL=https://img.example.com/\nIMGCRUNCH_JPEG_QUALITY=70\n"
    )
    monkeypatch.setenv("IMGCRUNCH_STORAGE_DIR", "/mnt/images")
    settings = Settings()
    assert settings.public_base_url == "https://img.example.com"
    assert settings.jpeg_quality == 70
    assert settings.storage_root == Path("/mnt/images")


def test_nonsense_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCRUNCH_JPEG_QUALITY", "101")
    with pytest.raises(ValueError, match="jpeg_quality"):
        Settings()


def test_a_visibility_timeout_shorter_than_a_claim_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGCRUNCH_QUEUE", "celery")
    monkeypatch.setenv("IMGCRUNCH_BROKER_VISIBILITY_TIMEOUT", "20")
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT must be longer than"):
        Settings()
    monkeypatch.setenv("IMGCRUNCH_QUEUE", "kafka")
    with pytest.raises(ValueError, match="queue"):
        Settings()


def test_allowed_hosts_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCRUNCH_ALLOWED_HOSTS", " images.intranet , 127.0.0.1:8080,,[::1]:9000")
    assert Settings().allowed_hosts == ("images.intranet", "127.0.0.1:8080", "[::1]:9000")


def test_the_default_effort_is_one_the_codec_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    from typing import get_args

    from imgcrunch.codec import Effort

    assert Settings().jpeg_effort == "balanced"
    assert set(get_args(Settings.model_fields["jpeg_effort"].annotation)) == set(Effort)
    monkeypatch.setenv("IMGCRUNCH_JPEG_EFFORT", "max")
    assert Settings().jpeg_effort == "max"
    monkeypatch.setenv("IMGCRUNCH_JPEG_EFFORT", "fastest")
    with pytest.raises(ValueError, match="jpeg_effort"):
        Settings()


def test_the_settings_load_nothing_else_of_ours() -> None:
    """Settings sit at the bottom: anything may import them without an import-order puzzle."""
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, imgcrunch.config; "
            "print(sorted(m for m in sys.modules if m.startswith('imgcrunch')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "['imgcrunch', 'imgcrunch.config']"
