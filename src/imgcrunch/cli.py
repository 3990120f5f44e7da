"""`imgcrunch serve | worker | migrate | process | submit | status | download`."""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgcrunch import __version__, logs
from imgcrunch.config import Settings, unknown_variables


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
    _add_client_commands(commands)
    args, passed_through = parser.parse_known_args(argv)
    if passed_through and args.command != "worker":
        parser.error(f"unrecognized arguments: {' '.join(passed_through)}")

    overrides = {key: value for key in ("host", "port") if (value := getattr(args, key, None))}
    settings = Settings(**overrides)
    logs.configure(settings.log_format)
    for name in unknown_variables():
        logging.getLogger("imgcrunch").warning("%s is not a setting of imgcrunch: ignored", name)
    if args.command in _CLIENT_COMMANDS:
        return _client(args, settings)
    if missing := _missing_extra(settings, args.command):
        raise SystemExit(missing)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "worker":
        return _worker(settings, passed_through)
    return _serve(settings)


_CLIENT_COMMANDS = ("process", "submit", "status", "download")
# codec.Effort's values, spelt out: `submit` must not load the codec (and pyvips) to know them.
_EFFORTS = ("balanced", "max")
_EFFORT_HELP = (
    "balanced: fewer bytes than standard libjpeg, for less CPU; max: the fewest bytes, for about "
    "four times balanced's CPU (default IMGCRUNCH_JPEG_EFFORT, balanced)"
)

_REFRESH_HELP = (
    "make every image again; by default, an image unchanged since your last request with the "
    "same options is reused, at the same URL"
)
# imaging.profiles' names, spelt out: the client commands do not load pyvips.
PROFILE_NAMES = ("amazon", "walmart", "google", "ebay")
_PROFILE_HELP = (
    "make the first variant (Output Image Urls) to a marketplace's image rules, and report "
    "what cannot be; see the README's Marketplace profiles section"
)
_VARIANTS_HELP = (
    "what to make of each image, e.g. 'zoom=2000:jpeg, listing=800:avif, "
    "thumb=200x200:pad:webp' (default IMGCRUNCH_VARIANTS: one JPEG at the original size); "
    "see the README's Variants section"
)


def _add_client_commands(commands: Any) -> None:
    process = commands.add_parser(
        "process",
        help="compress the images of a CSV on this machine, no server needed",
        description="Exit codes: 0 every image compressed, 1 some failed (their reasons are in "
        "the output CSV), 2 the CSV was refused.",
    )
    process.add_argument("csv", type=Path, help="the products CSV")
    process.add_argument("-o", "--out", type=Path, default=Path("out"), help="output folder")
    process.add_argument("--quality", type=int, choices=range(1, 101), metavar="1-100")
    process.add_argument("--effort", choices=_EFFORTS, help=_EFFORT_HELP)
    process.add_argument("--variants", help=_VARIANTS_HELP)
    process.add_argument("--profile", choices=PROFILE_NAMES, help=_PROFILE_HELP)
    process.add_argument(
        "--refresh",
        action="store_true",
        help="make every image again; by default, images unchanged since an earlier run into "
        "the same folder are reused",
    )

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--server",
        default=os.environ.get("IMGCRUNCH_SERVER", "http://localhost:8000"),
        help="the server's address (IMGCRUNCH_SERVER; default http://localhost:8000)",
    )
    server.add_argument(
        "--api-key",
        default=os.environ.get("IMGCRUNCH_API_KEY"),
        help="when the server has API keys (IMGCRUNCH_API_KEY)",
    )
    submit = commands.add_parser(
        "submit",
        parents=[server],
        help="upload a CSV to a server; prints the request id",
        description="Exit codes: 0 accepted (with --wait: every image compressed), 1 some "
        "images failed, 2 refused or failed, 3 the server cannot be reached.",
    )
    submit.add_argument("csv", type=Path)
    submit.add_argument("--wait", action="store_true", help="follow it to the end, with progress")
    submit.add_argument("--webhook-url")
    submit.add_argument("--quality", type=int, choices=range(1, 101), metavar="1-100")
    submit.add_argument("--effort", choices=_EFFORTS, help=_EFFORT_HELP)
    submit.add_argument("--variants", help=_VARIANTS_HELP)
    submit.add_argument("--profile", choices=PROFILE_NAMES, help=_PROFILE_HELP)
    submit.add_argument("--refresh", action="store_true", help=_REFRESH_HELP)
    status = commands.add_parser("status", parents=[server], help="a request's status, as JSON")
    status.add_argument("request_id")
    download = commands.add_parser("download", parents=[server], help="a request's output CSV")
    download.add_argument("request_id")
    download.add_argument("-o", "--output", type=Path, help="default imgcrunch-<id>.csv")


def _client(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    logging.getLogger().setLevel(logging.WARNING)  # the progress bar says what matters
    if args.command == "process":
        from imgcrunch import local_run
        from imgcrunch.codec import Effort

        effort = Effort(args.effort) if args.effort else None
        run = local_run.LocalRun(
            csv_path=args.csv,
            out=args.out,
            quality=args.quality,
            effort=effort,
            variants=args.variants,
            profile=args.profile,
            refresh=args.refresh,
        )
        return local_run.process(run, settings, console)
    from imgcrunch import remote  # alone: the client commands load neither pyvips nor SQLAlchemy

    server = remote.Server(url=args.server, api_key=args.api_key)
    if args.command == "submit":
        return remote.submit(
            server,
            args.csv,
            webhook_url=args.webhook_url,
            quality=args.quality,
            effort=args.effort,
            variants=args.variants,
            profile=args.profile,
            refresh=args.refresh,
            wait=args.wait,
            console=console,
        )
    if args.command == "status":
        return remote.status(server, args.request_id, console)
    return remote.download(server, args.request_id, args.output, console)


_SCALE_OUT = "pip install 'imgcrunch[scale-out]'"


def _missing_extra(settings: Settings, command: str) -> str | None:
    """One line naming the extra a setting needs and this install lacks, not a traceback from
    deep inside Alembic or Celery."""
    needs = []
    if settings.database_url.startswith("postgresql"):
        needs.append(("asyncpg", "IMGCRUNCH_DATABASE_URL is a PostgreSQL URL"))
    if command == "worker" or (command == "serve" and settings.queue == "celery"):
        needs.append(("celery", "scale-out mode (IMGCRUNCH_QUEUE=celery, imgcrunch worker)"))
    if settings.storage_url.startswith("s3://"):
        needs.append(("obstore", "IMGCRUNCH_STORAGE_URL is an S3 bucket"))
    for module, why in needs:
        try:
            importlib.import_module(module)
        except ImportError:
            return f"imgcrunch {command}: {why} needs the scale-out extras: {_SCALE_OUT}"
    return None


def _migrate(settings: Settings) -> int:
    from imgcrunch.db import migrate

    migrate(settings.database_url)
    logging.getLogger("imgcrunch").info("database is up to date")
    return 0


def _worker(settings: Settings, celery_options: Sequence[str]) -> int:
    _count_across_processes()  # before celery_app, whose imports load prometheus_client
    from imgcrunch import celery_app
    from imgcrunch.celery_app import BATCHES_QUEUE, CONTROL_QUEUE

    app = celery_app.configure(settings)
    if settings.worker_metrics_port is not None:
        from imgcrunch import metrics

        metrics.serve_worker_metrics(host=settings.host, port=settings.worker_metrics_port)
    # Ours first: an option given again on the command line wins.
    queues = f"{BATCHES_QUEUE},{CONTROL_QUEUE}"
    app.worker_main(["worker", "--loglevel=INFO", f"--queues={queues}", *celery_options])
    return 0


def _count_across_processes() -> None:
    """Have prometheus-client count in files that a worker's pool processes share (its
    multiprocess mode), whether or not the worker serves them: the mode is picked when
    prometheus_client is first imported, before the settings are known."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess folder was set")
    if folder := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        for stale in Path(folder).glob("*.db"):  # an earlier worker's: counters start at zero
            stale.unlink()
    else:
        folder = tempfile.mkdtemp(prefix="imgcrunch-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        owner = os.getpid()  # not a pool process that happens to run exit handlers

        @atexit.register
        def _remove() -> None:
            if os.getpid() == owner:
                shutil.rmtree(folder, ignore_errors=True)


def _answer_promptly() -> None:
    """Keep the server's event loop answering while its threads work hard.

    A thread checking a big upload (pure Python, for seconds) held the GIL for up to 1.4 s at a
    time against the loop at CPython's default 5 ms switch interval; at 0.5 ms the loop is never
    held up for more than a few milliseconds. And the objects of start-up (the app, its
    libraries) are frozen out of the garbage collector, which otherwise walked them all every
    few seconds, stopping the loop for about 100 ms each time, while an ingest made objects.
    """
    sys.setswitchinterval(0.0005)
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _serve(settings: Settings) -> int:
    import uvicorn

    from imgcrunch.api import create_app

    if settings.auto_migrate:
        _migrate(settings)
    app = create_app(settings)
    _answer_promptly()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,  # uvicorn's lines go through our handler: one format for all
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
