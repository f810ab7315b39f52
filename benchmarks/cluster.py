#!/usr/bin/env python3
"""instancelib.dask on a LocalCluster: starting many instances across workers, and listing them.

Prints one table (ms):

- ``--count`` (100) idle busybox instances started with one ``instancelib.dask.start(...,
  replicas=N)`` across ``--workers`` (2) local worker processes: the wall time and the cost
  per instance, beside the same number of ``Instance.start`` calls in this one process (one
  after another, and from 8 threads at once);
- a cluster-wide ``instancelib.dask.list`` of them (min / median / max of ``-n`` calls), and
  a local ``InstanceRegistry.list()`` of the same number for scale;
- their ``instancelib.dask.stop`` by pattern.

Run as root or as an ordinary user:
    python3 benchmarks/cluster.py [--count 100] [--workers 2] [-n 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

import distributed

import instancelib.dask as cluster
from instancelib import Image, Instance, InstanceRegistry
from instancelib.build.busybox import make_busybox_rootfs


def timed(action: object) -> float:
    begin = time.perf_counter()
    action()  # type: ignore[operator]
    return (time.perf_counter() - begin) * 1000


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} | {statistics.median(values):.1f} | {max(values):.1f}"


def local_rows(image: Image, registry: InstanceRegistry, count: int,
               rounds: int) -> list[str]:
    rows = []
    wall = timed(lambda: [Instance.start(image, f"seq{i}", registry=registry)
                          for i in range(count)])
    rows.append(f"| {count} `Instance.start` in one process, one after another | {wall:.0f} | "
                f"{wall / count:.2f} | |")
    lists = [timed(registry.list) for _ in range(rounds)]
    rows.append(f"| `InstanceRegistry.list()` of {count}, local (min / median / max) | | | "
                f"{spread(lists)} |")
    registry.stop("*")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        wall = timed(lambda: list(pool.map(
            lambda i: Instance.start(image, f"thr{i}", registry=registry), range(count))))
    rows.append(f"| {count} `Instance.start` in one process, from 8 threads | {wall:.0f} | "
                f"{wall / count:.2f} | |")
    registry.stop("*")
    return rows


def cluster_rows(image: Image, root: Path, count: int, workers: int,
                 rounds: int) -> list[str]:
    with distributed.LocalCluster(n_workers=workers, processes=True, threads_per_worker=1,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as lc, \
            distributed.Client(lc) as client:
        cluster.register(client, root=root)
        cluster.start(client, image, "warm", replicas=workers)  # each worker's fork-server
        cluster.stop(client, "warm-*")
        rows = []
        wall = timed(lambda: cluster.start(client, image, "bench", replicas=count))
        rows.append(f"| {count} instances with `instancelib.dask.start(replicas={count})` "
                    f"over {workers} workers | {wall:.0f} | {wall / count:.2f} | |")
        listed = cluster.list(client)
        assert len(listed) == count, f"listed {len(listed)} of {count}"
        lists = [timed(lambda: cluster.list(client)) for _ in range(rounds)]
        rows.append(f"| cluster-wide `instancelib.dask.list` of {count} (min / median / max) "
                    f"| | | {spread(lists)} |")
        wall = timed(lambda: cluster.stop(client, "bench-*"))
        rows.append(f"| `instancelib.dask.stop(\"bench-*\")` of {count} | {wall:.0f} | "
                    f"{wall / count:.2f} | |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="instances (default 100)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("-n", type=int, default=20, help="list calls per row (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="instancelib-bench-cluster-") as tmp:
        image = Image(make_busybox_rootfs(Path(tmp) / "image"))
        registry = InstanceRegistry(Path(tmp) / "registry")
        try:
            Instance.start(image, "warm", registry=registry).stop()
            rows = local_rows(image, registry, args.count, args.n)
            rows += cluster_rows(image, Path(tmp) / "dask", args.count, args.workers, args.n)
        finally:
            registry.stop(force=True)
    print("| ms | wall | per instance | min / median / max |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
