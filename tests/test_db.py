"""Migrations build the schema the models describe, and `imgcrunch migrate` applies them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from imgcrunch.db import migrate
from imgcrunch.models import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    migrate(f"sqlite+aiosqlite:///{database}")
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_migrate_command_creates_a_wal_database_in_the_data_dir(tmp_path: Path) -> None:
    env = {"IMGCRUNCH_DATA_DIR": str(tmp_path / "fresh" / "var"), "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # and a second run is a no-op
        result = subprocess.run(
            [sys.executable, "-m", "imgcrunch", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "fresh" / "var" / "imgcrunch.db") as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert {"requests", "products", "images", "webhook_deliveries", "alembic_version"} <= tables
