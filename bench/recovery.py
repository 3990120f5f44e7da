"""Recovery benchmark: what a SIGKILL costs a request, with the default lease and sweep.

- **scale-out**: two workers share a request; when it is nine tenths done, the worker holding a
  claim is killed with SIGKILL, pool and all. Its claims come back once their lease
  (IMGCRUNCH_CLAIM_TIMEOUT, 30 s) has run out, at the next sweep (IMGCRUNCH_SWEEP_INTERVAL,
  30 s), so the worst case is near the end of a request, when nothing else is left to do.
- **embedded**: the server is killed with SIGKILL half way and started again at once.

The cost is the time from the kill to completion, less the time the images left would have
taken at the pace seen before the kill (for scale-out, the survivor's: half of it). Target:
at most 90 s beyond the remaining work. Run: `.venv/bin/python bench/recovery.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from harness import (
    RESULTS,
    BenchError,
    Origin,
    Service,
    build_csv,
    load_photos,
    new_service,
    process_tree,
    start,
    upload,
    write_json,
)
from scale_out import check_servers, scale_out

TARGET_SECONDS = 90.0
POLL = 0.2
GIVE_UP = 600.0  # seconds without completion: the bench reports a failure, not a figure


@dataclass(frozen=True)
class Recovery:
    mode: str
    images: int
    done_at_kill: int
    after_kill_s: float  # from the kill to completion
    remaining_work_s: float  # what the images left take at the pace before the kill
    cost_s: float  # after_kill_s - remaining_work_s


@dataclass(frozen=True)
class RecoveryReport:
    runs: list[Recovery]


def progress(client: httpx.Client, request_id: str) -> dict[str, Any]:
    status: dict[str, Any] = client.get(f"/status/{request_id}").json()
    if status["progress"]["failed"]:
        raise BenchError(f"an image failed: {status['errors'][:3]}")
    return status


def wait_for(client: httpx.Client, request_id: str, done: int) -> dict[str, Any]:
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        try:
            status = progress(client, request_id)
        except httpx.TransportError:  # the embedded server, restarting
            time.sleep(POLL)
            continue
        if status["status"] == "completed" or status["progress"]["done"] >= done:
            return status
        time.sleep(POLL)
    raise BenchError(f"request {request_id} not at {done} images after {GIVE_UP:g} s")


def claim_holder_pids(database_url: str) -> set[int]:
    async def fetch() -> list[str]:
        connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            rows = await connection.fetch(
                "SELECT DISTINCT claimed_by FROM images WHERE status = 'pending'"
                " AND claimed_by IS NOT NULL"
            )
        finally:
            await connection.close()
        return [row[0] for row in rows]

    return {int(holder.rsplit(":", 1)[1]) for holder in asyncio.run(fetch())}


def run_scale_out(origin: Origin, images: int) -> Recovery:
    with scale_out(2) as deployment, httpx.Client(base_url=deployment.api.base_url) as client:
        sent = upload(client, build_csv(origin, images))
        started = time.monotonic()
        database_url = deployment.api.env["IMGCRUNCH_DATABASE_URL"]
        while True:
            status = wait_for(client, sent.request_id, images * 9 // 10)
            holders = claim_holder_pids(database_url)
            doomed = [w for w in deployment.workers if holders & set(process_tree(w.pid))]
            if doomed or status["status"] == "completed":
                break
        if not doomed:
            raise BenchError("the request completed before a worker could be killed in it")
        done = status["progress"]["done"]
        killed_at = time.monotonic()
        os.killpg(doomed[0].pid, signal.SIGKILL)
        doomed[0].wait()
        wait_for(client, sent.request_id, images)
        finished = time.monotonic()
    survivor_pace = done / (killed_at - started) / 2
    return _recovery("scale-out", images, done, killed_at, finished, survivor_pace)


def run_embedded(origin: Origin, images: int) -> Recovery:
    with tempfile.TemporaryDirectory(prefix="imgcrunch-bench-") as folder:
        service = new_service(Path(folder))
        start(service)
        try:
            with httpx.Client(base_url=service.base_url) as client:
                sent = upload(client, build_csv(origin, images))
                started = time.monotonic()
                done = wait_for(client, sent.request_id, images // 2)["progress"]["done"]
                killed_at = time.monotonic()
                _kill_tree(service)
                start(service)
                wait_for(client, sent.request_id, images)
                finished = time.monotonic()
        finally:
            service.stop()
    pace = done / (killed_at - started)
    return _recovery("embedded", images, done, killed_at, finished, pace)


def _kill_tree(service: Service) -> None:
    assert service.process is not None
    for pid in process_tree(service.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.process.wait()


def _recovery(
    mode: str, images: int, done: int, killed_at: float, finished: float, pace: float
) -> Recovery:
    after = finished - killed_at
    remaining = (images - done) / pace
    return Recovery(mode, images, done, after, remaining, after - remaining)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="images per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode")
    parser.add_argument("--json", type=Path, default=RESULTS / "recovery.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_servers()
        origin = Origin(load_photos())
        runs: list[Recovery] = []
        try:
            for _ in range(args.repeats):
                for run in (run_scale_out, run_embedded):
                    runs.append(run(origin, args.images))
                    r = runs[-1]
                    print(
                        f"{r.mode:9} : killed at {r.done_at_kill}/{r.images}; completed "
                        f"{r.after_kill_s:.1f} s later, {r.remaining_work_s:.1f} s of it work "
                        f"left: cost {r.cost_s:.1f} s",
                        flush=True,
                    )
        finally:
            origin.stop()
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    for mode in ("scale-out", "embedded"):
        costs = [r.cost_s for r in runs if r.mode == mode]
        worst = max(costs)
        print(
            f"target: a SIGKILL costs {mode} at most {TARGET_SECONDS:g} s beyond its remaining "
            f"work : {'met' if worst <= TARGET_SECONDS else 'NOT met'} "
            f"(median {statistics.median(costs):.1f} s, worst {worst:.1f} s of {len(costs)})"
        )
    write_json(RecoveryReport(runs), args.json)
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
