"""`imgcrunch serve | migrate`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from imgcrunch import __version__
from imgcrunch.config import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="imgcrunch",
        description="Batch image compression for product catalogs. "
        "Settings come from IMGCRUNCH_* environment variables or a .env file.",
    )
    parser.add_argument("--version", action="version", version=f"imgcrunch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the API with its in-process workers")
    serve.add_argument("--host", help="address to listen on (IMGCRUNCH_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (IMGCRUNCH_PORT)")
    commands.add_parser("migrate", help="create or upgrade the database schema")
    args = parser.parse_args(argv)

    overrides = {key: value for key in ("host", "port") if (value := getattr(args, key, None))}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("httpx", "pyvips"):  # a line per image is noise, not a log
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.command == "migrate":
        return _migrate(settings)
    return _serve(settings)


def _migrate(settings: Settings) -> int:
    from imgcrunch.db import migrate

    migrate(settings.database_url)
    logging.getLogger("imgcrunch").info("database is up to date")
    return 0


def _serve(settings: Settings) -> int:
    import uvicorn

    from imgcrunch.api import create_app

    if settings.auto_migrate:
        _migrate(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
