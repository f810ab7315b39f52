#!/usr/bin/env python3
"""cgroup benchmark: what a cgroup and limits add to start and stop, and stats().

Measures, as medians over ``-n`` rounds (after warm-up rounds), with one idle
busybox image:

- start / stop with no cgroup at all (the cgroup planner switched off in this
  process: what an ordinary user without a delegated subtree gets);
- start / stop with the instance's own cgroup and no limits (root's default);
- start / stop with limits on every controller this host offers (memory, cpu,
  pids, and cpuset + io weight where present);
- ``instance.stats()``: one sample (cgroup files, or the process tree);
- ``pause()`` + ``resume()``.

Starts and stops are spaced by ``--gap`` seconds (default 0.2), as in a
service's life: the fork-server makes the next spare PID 1 (and moves it into a
cgroup of the right tree, the costly part of a cgroup move) while the caller is
busy.  ``--gap 0`` measures back-to-back calls: a start may then wait for that
spare, and a stop's rmdir for the kernel's cgroup lock the move holds.

Targets (issue 5): stats() ≤ 2 ms; start with limits ≤ start without + 10 ms on
cgroup v1, + 3 ms on cgroup v2.  Run as root:  python3 benchmarks/cgroups.py [-n 30]
On a hybrid host, the v2 figures come from the throw-away VM (Python there is
~20x slower, so compare the differences, not the absolute times):
  ../shared/v2vm/run-in-v2vm.sh 'python3 benchmarks/cgroups.py -n 10'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from instancelib import Image, Instance, InstanceRegistry, Limits
from instancelib.build.busybox import make_busybox_rootfs
from instancelib.cgroups import tree

IDLE_SCRIPT = "#!/bin/sh\nexec sleep 1000000\n"


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


@contextmanager
def no_cgroup() -> Iterator[None]:
    """Switch the planner off in this process: instances get no cgroup."""
    real = tree.plan
    tree.plan = lambda name, limits: None  # type: ignore[assignment]
    try:
        yield
    finally:
        tree.plan = real  # type: ignore[assignment]


def full_limits() -> Limits:
    hierarchies = tree.detect()
    offered = set(hierarchies.v1_mounts)
    if hierarchies.v2_mount:
        with open(os.path.join(hierarchies.v2_mount, "cgroup.controllers")) as f:
            offered |= set(f.read().split())
    fields: dict[str, object] = {"memory": "512M", "cpus": 1.5, "pids_limit": 1000}
    if "cpuset" in offered:
        fields["cpuset_cpus"] = "0"
    if "blkio" in offered or "io" in offered:
        fields["blkio_weight"] = 500
    return Limits(**fields)  # type: ignore[arg-type]


def lifecycle(image: Image, registry: InstanceRegistry, limits: Limits, *, rounds: int,
              warmup: int, gap: float, cycles: int = 3) -> dict[str, dict[str, list[float]]]:
    """The three cases in turn, ``cycles`` times (no case gets a warmer machine).

    Each block starts with ``warmup`` rounds: switching between no cgroup and
    a cgroup makes the fork-server replace its spare PID 1 once.
    """
    cases: dict[str, Limits | None] = {"no cgroup": None, "cgroup, no limits": None,
                                       "cgroup + limits": limits}
    results = {case: {"start": [], "stop": []} for case in cases}  # type: ignore[var-annotated]
    per_block = max(1, rounds // cycles)
    for cycle in range(cycles):
        for n, (case, case_limits) in enumerate(cases.items()):
            for k in range(warmup + per_block):
                time.sleep(gap)
                with no_cgroup() if case == "no cgroup" else nullcontext():
                    began = time.perf_counter()
                    instance = Instance.start(image, f"b{cycle}.{n}.{k}", registry=registry,
                                              limits=case_limits)
                    started = time.perf_counter()
                cgroup = instance.cgroup
                time.sleep(gap)
                began_stop = time.perf_counter()
                instance.stop()
                stopped = time.perf_counter()
                if k >= warmup:
                    results[case]["start"].append(started - began)
                    results[case]["stop"].append(stopped - began_stop)
                if cycle == 0 and k == 0:
                    print(f"# {case}: cgroup {cgroup.version if cgroup else 'none'}"
                          f"{' ' + json.dumps(cgroup.controllers) if cgroup else ''}",
                          flush=True)
    return results


def sampling(image: Image, registry: InstanceRegistry, rounds: int) -> dict[str, object]:
    instance = Instance.start(image, "sampled", registry=registry, limits=Limits(memory="256M"))
    try:
        stats, pauses = [], []
        source = instance.stats().source
        for _ in range(rounds):
            began = time.perf_counter()
            instance.stats()
            stats.append(time.perf_counter() - began)
        for _ in range(rounds):
            began = time.perf_counter()
            instance.pause()
            instance.resume()
            pauses.append(time.perf_counter() - began)
    finally:
        instance.stop()
    return {"stats": stats, "pause": pauses, "source": source}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.2)
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (an ordinary user without delegation has no cgroup)")

    workdir = Path(tempfile.mkdtemp(prefix="instancelib-bench-"))
    try:
        registry = InstanceRegistry(workdir / "registry")
        image = Image(make_busybox_rootfs(workdir / "image", startscript=IDLE_SCRIPT))
        Instance.start(image, "warm-forkserver", registry=registry).stop()
        limits = full_limits()
        runs = lifecycle(image, registry, limits, rounds=args.rounds, warmup=args.warmup,
                         gap=args.gap)
        sampled = sampling(image, registry, args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    hierarchies = tree.detect()
    kind = ("hybrid" if hierarchies.v1_mounts and hierarchies.v2_mount
            else "v2" if hierarchies.v2_mount else "v1")
    print(f"# cgroups on {socket.gethostname()} ({kind}), kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs, n={args.rounds}, gap {args.gap} s (medians)")
    print(f"# limits: {json.dumps(limits.to_dict())}")
    print()
    base = ms(runs["no cgroup"]["start"])
    print("| case | start ms | vs no cgroup | stop ms |")
    print("|---|---:|---:|---:|")
    for name, run in runs.items():
        start = ms(run["start"])
        print(f"| {name} | {start:.2f} | {start - base:+.2f} | {ms(run['stop']):.2f} |")
    print()
    print(f"stats(): {ms(sampled['stats']):.3f} ms ({sampled['source']}); "  # type: ignore[arg-type]
          f"pause()+resume(): {ms(sampled['pause']):.2f} ms")  # type: ignore[arg-type]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "sampling": sampled, "limits": limits.to_dict()}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
