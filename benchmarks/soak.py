#!/usr/bin/env python3
"""Soak: N start/exec/stop cycles; what the caller and the host hold, every 100 cycles.

Each cycle starts an instance (alternating a plain one, one with writable_tmpfs, one
with a bind and a pid file), runs a command in it, lists the registry, reads its
stats and stops it.  Every ``--every`` cycles it prints a row: the caller's open
descriptors and RSS, the fork-server's, and the kernel objects on the host —
mounts, loop devices, instancelib cgroups, instance PID 1s and spares, files in
the registry — plus the median cycle time.  Nothing should grow.

    python3 benchmarks/soak.py [-n 500] [--every 100]     (as root or as a user)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from instancelib import Image, Instance, InstanceRegistry
from instancelib.build.busybox import make_busybox_rootfs
from instancelib.linux import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import instance_processes, loop_devices, our_cgroups

SERVICE = "#!/bin/sh\necho up\nexec sleep 1000\n"


def _mounts() -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for _ in f)


def _spares() -> int:
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("instancelib-spare"):
            count += 1
    return count


def _row(cycle: int, registry: InstanceRegistry, times: list[float]) -> str:
    me = psutil.Process()
    server = psutil.Process(client.get_forkserver().process.pid)
    files = len(os.listdir(registry.instances_dir)) + len(os.listdir(registry.logs_dir))
    return (f"| {cycle} | {me.num_fds()} | {me.memory_info().rss // 1024} | "
            f"{server.num_fds()} | {server.memory_info().rss // 1024} | {_mounts()} | "
            f"{len(loop_devices())} | {len(our_cgroups())} | {len(instance_processes())} | "
            f"{_spares()} | {files} | {statistics.median(times) * 1000:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--cycles", type=int, default=500)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="instancelib-soak-"))
    try:
        registry = InstanceRegistry(workdir / "registry")
        image = Image(make_busybox_rootfs(workdir / "image", startscript=SERVICE))
        shared = workdir / "shared"
        shared.mkdir()
        Instance.start(image, "warm", registry=registry).stop()
        print(f"# soak: {args.cycles} cycles as UID {os.geteuid()}, kernel {os.uname().release}")
        print("| cycles | caller fds | caller RSS KB | server fds | server RSS KB | mounts | "
              "loops | cgroups | PID 1s | spares | registry files | cycle ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        times: list[float] = []
        print(_row(0, registry, [0.0]), flush=True)
        for cycle in range(1, args.cycles + 1):
            began = time.perf_counter()
            options: dict[str, object] = [
                {}, {"writable_tmpfs": True},
                {"binds": [f"{shared}:/shared"], "pid_file": workdir / "soak.pid"},
            ][cycle % 3]
            instance = Instance.start(image, f"soak{cycle % 7}", registry=registry, **options)
            assert instance.exec(["true"]).returncode == 0
            assert [i.name for i in registry.list()] == [instance.name]
            instance.stats()
            instance.stop()
            times.append(time.perf_counter() - began)
            if cycle % args.every == 0:
                print(_row(cycle, registry, times), flush=True)
                times = []
    finally:
        for instance in InstanceRegistry(workdir / "registry").list():
            instance.stop(force=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
