"""Alembic environment: runs migrations over the application's own async engine."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from imgcrunch.db import create_engine
from imgcrunch.models import Base


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("imgcrunch migrations run online only: `imgcrunch migrate`")
if (given := context.config.attributes.get("connection")) is not None:
    run_migrations(given)  # called from code that already holds a connection (db.upgrade)
else:
    asyncio.run(run_async_migrations())
