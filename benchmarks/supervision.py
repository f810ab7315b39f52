#!/usr/bin/env python3
"""Supervision's costs: start and stop with and without it, a restart's latency, PID 1's PSS.

Prints three tables:

- start and stop of an idle busybox service (min / median / max ms over ``-n`` rounds)
  with ``restart="no"`` and no health check (the default), with ``restart="on-failure"``,
  and with a command health check as well;
- a restart's latency: from the service's exit, as PID 1 saw it, to the new service
  spawned, less the backoff (the delay PID 1 waited on purpose), from the state file's
  own timestamps (``exited``/``restarting`` then ``running``), over ``--restarts`` exits;
- PID 1's PSS (from ``/proc/PID/smaps_rollup``) with ``--count`` instances up, without and
  with a health check configured (and run a few times).

Run as root or as an ordinary user:
    python3 benchmarks/supervision.py [-n 30] [--restarts 10] [--count 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from instancelib import HealthCheck, Image, Instance, InstanceRegistry
from instancelib.build.busybox import make_busybox_rootfs


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} | {statistics.median(values):.2f} | {max(values):.2f}"


def lifecycle_rows(image: Image, registry: InstanceRegistry, rounds: int) -> list[str]:
    rows = []
    choices: tuple[tuple[str, dict[str, Any]], ...] = (
        ('default (`restart="no"`, no health check)', {}),
        ('`restart="on-failure"`', {"restart": "on-failure"}),
        ('`restart="on-failure"` and a command health check',
         {"restart": "on-failure", "health": HealthCheck(["true"], interval=30)}))
    for label, options in choices:
        starts, stops = [], []
        Instance.start(image, "warm", registry=registry, **options).stop()
        for i in range(rounds):
            began = time.perf_counter()
            instance = Instance.start(image, f"life{i}", registry=registry, **options)
            starts.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            instance.stop()
            stops.append((time.perf_counter() - began) * 1000)
        rows.append(f"| start, {label} | {spread(starts)} |")
        rows.append(f"| stop, {label} | {spread(stops)} |")
    return rows


def state_of(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_bytes().split(b"\n", 1)[0])  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def restart_rows(make: Any, registry: InstanceRegistry, restarts: int) -> list[str]:
    """A service that exits (status 1) 50 ms after each start, under ``on-failure``: for
    each of the first ``restarts`` exits (backoffs 0.1, 0.2, 0.4 ... s), the time from the
    exit PID 1 wrote ("restarting") to the new service it wrote ("running"), less the
    backoff it announced."""
    image = make(startscript="#!/bin/sh\nsleep 0.05\nexit 1\n")
    instance = Instance.start(image, "restarts", registry=registry, restart="on-failure")
    path = registry.instances_dir / "restarts.state"
    latencies: list[float] = []
    exited_at: float | None = None
    seen = 0
    deadline = time.monotonic() + 120
    try:
        while seen < restarts and time.monotonic() < deadline:
            state = state_of(path)
            if state is None:
                continue
            if state["service"] == "restarting" and exited_at is None:
                exited_at, backoff = state["updated"], state["restart_at"] - state["updated"]
            elif state["service"] == "running" and exited_at is not None \
                    and state["restarts"] > seen:
                latencies.append((state["updated"] - exited_at - backoff) * 1000)
                seen, exited_at = state["restarts"], None
            time.sleep(0.0005)
    finally:
        instance.stop(force=True)
    return [f"| restart latency less the backoff, {len(latencies)} restarts | "
            f"{spread(latencies)} |"]


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError("no Pss line")


def pss_rows(make: Any, registry: InstanceRegistry, count: int) -> list[str]:
    rows = []
    image = make(startscript="#!/bin/sh\nexec sleep 1000\n")
    choices: tuple[tuple[str, dict[str, Any]], ...] = (
        ("no health check", {}),
        ("a command health check (every 0.1 s)",
         {"health": HealthCheck(["true"], interval=0.1)}))
    for label, options in choices:
        started = [Instance.start(image, f"pss{i}", registry=registry, **options)
                   for i in range(count)]
        time.sleep(1.0)  # a few checks have run
        values = [float(pss_kib(i.pid)) for i in started]
        rows.append(f"| PID 1's PSS (KiB), {count} up, {label} | {spread(values)} |")
        for instance in started:
            instance.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="starts and stops per row")
    parser.add_argument("--restarts", type=int, default=6, help="restarts timed (default 6)")
    parser.add_argument("--count", type=int, default=20, help="instances for the PSS rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="instancelib-bench-supervision-") as tmp:
        counter = iter(range(1000))

        def make(**kwargs: Any) -> Image:
            return Image(make_busybox_rootfs(Path(tmp) / f"image{next(counter)}", **kwargs))

        registry = InstanceRegistry(Path(tmp) / "registry")
        try:
            rows = lifecycle_rows(make(), registry, args.n)
            rows += restart_rows(make, registry, args.restarts)
            rows += pss_rows(make, registry, args.count)
        finally:
            registry.stop(force=True)
    print("| ms (KiB for PSS) | min | median | max |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
