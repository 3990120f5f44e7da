"""Migrations build the schema the models describe, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from imgcrunch.db import alembic_config, create_engine, migrate
from imgcrunch.models import Base


def test_migrations_match_the_models(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)  # a second run is a no-op

    def differences(connection: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async def compare() -> list[Any]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(differences)
        finally:
            await engine.dispose()

    assert asyncio.run(compare()) == []


def test_migrations_go_down_and_up_again(database_url: str) -> None:
    migrate(database_url)
    command.downgrade(alembic_config(database_url), "base")

    async def tables() -> set[str]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    assert asyncio.run(tables()) <= {"alembic_version"}
    migrate(database_url)
    assert {"requests", "products", "images", "webhook_deliveries"} <= asyncio.run(tables())


@pytest.mark.slow
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
