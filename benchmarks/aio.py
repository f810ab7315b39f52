#!/usr/bin/env python3
"""The async face: how long the event loop is held while instances start, and its cost per call.

Prints two tables:

- the loop's lag while ``--count`` (20) ``AsyncInstance.start`` run at once, then their
  stops (``--rounds`` times): a ticker asks for a 1 ms sleep again and again, and the lag
  is how late each wake-up came (max, 99th percentile, median), beside the same ticker on
  an idle loop and while the same starts and stops run (sync) in *another* process: the
  lag the machine itself imposes (its CPUs busy with the fork-server, launchers and new
  PID 1s), which no design of the async face can go below.  The async rows come twice:
  with the helper process (the default, ``instancelib.offload``) and with the work on
  worker threads of the caller's process (``INSTANCELIB_AIO_HELPER=0``), whose GIL the
  loop's thread then waits for;
- with each, the longest any one callback ran on the loop's thread, in that thread's CPU
  time (``time.thread_time``: the work a call does there; the wall-clock lag above also
  counts waiting for the GIL and for a CPU);
- min / median / max over ``-n`` calls of ``exec(["true"])`` and ``stats()``, sync and
  awaited, and the difference of the medians (the async face's overhead per call).

Run as root or as an ordinary user:
    python3 benchmarks/aio.py [-n 50] [--count 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from instancelib import Image, Instance, InstanceRegistry, offload
from instancelib.aio import AsyncInstance
from instancelib.build.busybox import make_busybox_rootfs


async def ticker(stop: asyncio.Event, lags: list[float]) -> None:
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - asked - 0.001) * 1000)


async def lag_during(work: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    stop = asyncio.Event()
    lags: list[float] = []
    tick = asyncio.ensure_future(ticker(stop, lags))
    await asyncio.sleep(0.01)
    try:
        result = await work()
    finally:
        stop.set()
        await tick
    return lags, result


def summary(lags: list[float]) -> str:
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{max(ordered):.2f} | {p99:.2f} | {statistics.median(ordered):.2f} | {len(ordered)}"


ELSEWHERE = """
import sys
from instancelib import Image, Instance, InstanceRegistry, offload
registry = InstanceRegistry(sys.argv[2])
Instance.start(Image(sys.argv[1]), "warm-elsewhere", registry=registry).stop()
print("ready", flush=True)
sys.stdin.readline()
started = [Instance.start(Image(sys.argv[1]), f"elsewhere{i}", registry=registry)
           for i in range(int(sys.argv[3]))]
for instance in started:
    instance.stop()
print("done", flush=True)
"""


async def lag_elsewhere(image: Image, registry: InstanceRegistry, count: int) -> list[float]:
    """The ticker's lag while another process starts and stops ``count`` instances."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ELSEWHERE, image.path, str(registry.root), str(count),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    await process.stdout.readline()

    async def work() -> None:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        await process.stdout.readline()

    lags, _ = await lag_during(work)
    await process.wait()
    return lags


class CallbackClock:
    """The thread CPU time of every callback the loop runs (asyncio's Handle._run timed)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.count = 0
        self._original = asyncio.events.Handle._run

    def __enter__(self) -> CallbackClock:
        clock = self
        original = self._original

        def timed(handle: asyncio.events.Handle) -> None:
            began = time.thread_time()
            try:
                original(handle)
            finally:
                clock.count += 1
                clock.longest = max(clock.longest, time.thread_time() - began)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]


async def lag_rounds(image: Image, registry: InstanceRegistry, count: int,
                     rounds: int) -> tuple[list[float], list[float], CallbackClock]:
    """The loop's lag during ``rounds`` of ``count`` starts at once and their stops."""
    during_starts: list[float] = []
    during_stops: list[float] = []
    with CallbackClock() as clock:
        for _ in range(rounds):
            lags, started = await lag_during(lambda: asyncio.gather(*(
                AsyncInstance.start(image, f"lag{i}", registry=registry)
                for i in range(count))))
            during_starts += lags
            lags, _ = await lag_during(
                lambda: asyncio.gather(*(instance.stop() for instance in started)))  # noqa: B023
            during_stops += lags
    return during_starts, during_stops, clock


async def helper_ready(image: Image, registry: InstanceRegistry) -> None:
    """One start and stop (the first starts the helper), then until the helper answers."""
    await (await AsyncInstance.start(image, "warm-async", registry=registry)).stop()
    for _ in range(500):
        if offload.ready():
            return
        await asyncio.sleep(0.01)
    raise SystemExit("the async face's helper process did not come up in 5 s")


async def lag_table(image: Image, registry: InstanceRegistry, count: int,
                    rounds: int) -> list[str]:
    idle, _ = await lag_during(lambda: asyncio.sleep(0.5))
    elsewhere: list[float] = []
    for _ in range(rounds):
        elsewhere += await lag_elsewhere(image, registry, count)
    lines = [f"| idle loop (0.5 s) | {summary(idle)} |",
             f"| peer: {count} starts and stops (sync) in another process | "
             f"{summary(elsewhere)} |"]
    await helper_ready(image, registry)
    for label, helper in (("helper process", "1"), ("threads, INSTANCELIB_AIO_HELPER=0", "0")):
        os.environ["INSTANCELIB_AIO_HELPER"] = helper
        starts, stops, clock = await lag_rounds(image, registry, count, rounds)
        lines += [f"| {label}: {count} starts at once | {summary(starts)} |",
                  f"| {label}: their {count} stops at once | {summary(stops)} |",
                  f"| {label}: longest callback on the loop's thread (thread CPU time, ms; "
                  f"{clock.count} callbacks) | {clock.longest * 1000:.2f} | | | |"]
    del os.environ["INSTANCELIB_AIO_HELPER"]
    return lines


def timed_sync(action: Callable[[], object], rounds: int) -> list[float]:
    values = []
    for _ in range(rounds):
        begin = time.perf_counter()
        action()
        values.append((time.perf_counter() - begin) * 1000)
    return values


async def timed_async(action: Callable[[], Awaitable[object]], rounds: int) -> list[float]:
    values = []
    for _ in range(rounds):
        begin = time.perf_counter()
        await action()
        values.append((time.perf_counter() - begin) * 1000)
    return values


def row(label: str, values: list[float]) -> str:
    return (f"| {label} | {min(values):.2f} | {statistics.median(values):.2f} | "
            f"{max(values):.2f} |")


async def overhead_table(instance: Instance, rounds: int) -> list[str]:
    face = AsyncInstance(instance)
    rows = []
    for label, sync_call, async_call in (
        ('exec(["true"])', lambda: instance.exec(["true"]), lambda: face.exec(["true"])),
        ("stats()", instance.stats, face.stats),
    ):
        timed_sync(sync_call, 3)
        await timed_async(async_call, 3)
        sync_values = timed_sync(sync_call, rounds)
        async_values = await timed_async(async_call, rounds)
        rows += [row(f"`{label}` sync", sync_values), row(f"`await {label}`", async_values),
                 f"| overhead of the async face (medians) | | "
                 f"{statistics.median(async_values) - statistics.median(sync_values):+.2f} | |"]
    return rows


async def amain(rounds: int, count: int, repeats: int) -> int:
    with tempfile.TemporaryDirectory(prefix="instancelib-bench-aio-") as tmp:
        image = Image(make_busybox_rootfs(Path(tmp) / "image"))
        registry = InstanceRegistry(Path(tmp) / "registry")
        try:
            Instance.start(image, "warm", registry=registry).stop()  # the fork-server
            lags = await lag_table(image, registry, count, repeats)
            instance = Instance.start(image, "calls", registry=registry)
            calls = await overhead_table(instance, rounds)
            instance.stop()
        finally:
            registry.stop(force=True)
    print(f"| event-loop lag, ms (1 ms ticker; {repeats} rounds) | max | p99 | median | ticks |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(lags))
    print()
    print(f"| ms ({rounds} calls after 3 warm-ups) | min | median | max |")
    print("|---|---:|---:|---:|")
    print("\n".join(calls))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="calls per row (default 50)")
    parser.add_argument("--count", type=int, default=20, help="starts at once (default 20)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of starts and stops per row (default 3)")
    args = parser.parse_args()
    return asyncio.run(amain(args.n, args.count, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
