"""`imgcrunch serve | worker | migrate`."""

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
    commands.add_parser(
        "worker",
        add_help=False,  # --help, like every other option, goes to `celery worker`
        help="run a scale-out worker; its options are those of `celery worker` "
        "(imgcrunch worker --help lists them)",
    )
    args, passed_through = parser.parse_known_args(argv)
    if passed_through and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(passed_through)}")

    overrides = {key: value for key in ("host", "port") if (value := getattr(args, key, None))}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in (
        "httpx",
        "pyvips",
        "alembic.runtime.plugins",
    ):  # a line per image is noise, not a log
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "worker":
        return _worker(settings, passed_through)
    return _serve(settings)


def _migrate(settings: Settings) -> int:
    from imgcrunch.db import migrate

    migrate(settings.database_url)
    logging.getLogger("imgcrunch").info("database is up to date")
    return 0


def _worker(settings: Settings, celery_options: Sequence[str]) -> int:
    try:
        from imgcrunch import celery_app
    except ImportError as exc:
        raise SystemExit(
            f"imgcrunch worker needs the scale-out extras: pip install 'imgcrunch[scale-out]' "
            f"({exc})"
        ) from None
    from imgcrunch.celery_app import BATCHES_QUEUE, CONTROL_QUEUE

    app = celery_app.configure(settings)
    # Ours first: an option given again on the command line wins.
    queues = f"{BATCHES_QUEUE},{CONTROL_QUEUE}"
    app.worker_main(["worker", "--loglevel=INFO", f"--queues={queues}", *celery_options])
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
