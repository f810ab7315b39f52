#!/usr/bin/env python3
"""Lifecycle benchmark: instancelib against its peers, in one run, on this machine.

Measures, as medians over ``-n`` rounds (after warm-up rounds):

- start: ``Instance.start()`` call until it returns (the start script has been exec'd);
- exec: ``instance.exec(["true"])``;
- stop: ``instance.stop()`` (signal until PID 1 and every process are gone);
- list: ``InstanceRegistry.list()`` with ``--list-count`` (1000) real instances up,
  warm (repeated calls on one registry object, which keeps parsed records)
  and cold (the first call in a fresh registry object, as in a new process);
- PSS: the proportional set size of each instance's PID 1 with ``--pss-count`` (50) up.

Then, unless ``--no-peers``, runs ``../shared/bench/peers/bench.py`` for the
``--peers`` (default: floor, crun-nocg) with the same round count, and prints
one table.  Run as root:  python3 benchmarks/lifecycle.py [-n 20]
(as an ordinary user, with --no-peers: instances then get a user namespace).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from instancelib import Image, Instance, InstanceRegistry
from instancelib.build.busybox import make_busybox_rootfs
from instancelib.stopping import stop_instances

PEERS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "peers"
# The peers' workload: a shell that exits on SIGTERM/SIGINT, with a sleep child.
IDLE_SCRIPT = "#!/bin/sh\ntrap 'exit 0' TERM INT\nsleep 1000000 &\nwait\n"


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss for {pid}")


def measure_lifecycle(image: Image, registry: InstanceRegistry, rounds: int,
                      warmup: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"start": [], "exec": [], "stop": []}
    for k in range(warmup + rounds):
        began = time.perf_counter()
        instance = Instance.start(image, f"bench{k}", registry=registry)
        started = time.perf_counter()
        instance.exec(["true"])
        executed = time.perf_counter()
        instance.stop()
        stopped = time.perf_counter()
        if k >= warmup:
            results["start"].append(started - began)
            results["exec"].append(executed - started)
            results["stop"].append(stopped - executed)
    return results


def measure_scale(image: Image, registry: InstanceRegistry, pss_count: int, list_count: int,
                  list_rounds: int) -> dict[str, object]:
    instances: list[Instance] = []
    try:
        for k in range(pss_count):
            instances.append(Instance.start(image, f"pss{k}", registry=registry))
        time.sleep(0.2)
        pss = [pss_kb(i.pid) for i in instances]
        for k in range(pss_count, list_count):
            instances.append(Instance.start(image, f"pss{k}", registry=registry))
        lists, cold = [], []
        for _ in range(list_rounds):
            began = time.perf_counter()
            count = len(registry.list())
            lists.append(time.perf_counter() - began)
            assert count == list_count, count
            fresh = InstanceRegistry(registry.root)
            began = time.perf_counter()
            fresh.list()
            cold.append(time.perf_counter() - began)
        env = dict(os.environ, INSTANCELIB_HOME=str(registry.root))
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "instancelib", "instance", "list"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        cli_list = time.perf_counter() - began
    finally:
        began = time.perf_counter()
        stop_instances(instances)
        stop_all = time.perf_counter() - began
    return {"pss_kb": pss, "list": lists, "list_cold": cold, "cli_list": cli_list,
            "stop_all": stop_all, "count": len(instances)}


def run_peer(peer: str, rounds: int, scale: int) -> dict[str, float] | str:
    bench = PEERS_DIR / "bench.py"
    if not bench.exists():
        return f"{bench} not found"
    if not Path("/tmp/bench-rootfs/idle.sh").exists():
        subprocess.run([str(PEERS_DIR / "make-rootfs.sh")], check=True,
                       stdout=subprocess.DEVNULL)
    if peer.startswith("crun") and shutil.which("crun") is None:
        return "crun is not installed (apt-get install crun)"
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([sys.executable, str(bench), "--peer", peer, "-n", str(rounds),
                               "--scale", str(scale), "--json", out.name],
                              capture_output=True, text=True, timeout=1800, check=False)
        try:
            with open(out.name) as f:
                data = json.load(f)
        except ValueError:
            return f"failed: {proc.stderr.strip()[-300:]}"
    if "error" in data:
        return f"failed: {data['error']}"
    summary = data["summary"]
    scale_case = data.get("scale_case", {}).get("summary", {})
    return {
        "start": summary["start"]["median"] * 1000,
        "exec": summary["exec"]["median"] * 1000,
        "stop": summary["stop"]["median"] * 1000,
        "list": scale_case.get("list", {}).get("median", float("nan")) * 1000,
        "pss": summary["monitor_pss_kb"]["median"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--list-count", type=int, default=1000)
    parser.add_argument("--list-rounds", type=int, default=20)
    parser.add_argument("--pss-count", type=int, default=50)
    parser.add_argument("--peers", default="floor,crun-nocg")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()
    if os.geteuid() != 0 and not args.no_peers:
        parser.error("the peers need root: run as root, or pass --no-peers")

    # Peers first, on a quiet machine (after instancelib's 1000-instance case the host's
    # reaper is still collecting exited PID 1s for a few seconds).
    peer_rows: dict[str, dict[str, float] | str] = {}
    if not args.no_peers:
        for peer in args.peers.split(","):
            peer_rows[peer] = run_peer(peer, args.rounds, args.pss_count)

    workdir = Path(tempfile.mkdtemp(prefix="instancelib-bench-"))
    try:
        registry = InstanceRegistry(workdir / "registry")
        image = Image(make_busybox_rootfs(workdir / "image", startscript=IDLE_SCRIPT))
        idle = Image(make_busybox_rootfs(workdir / "idle"))
        began = time.perf_counter()
        Instance.start(idle, "warm-forkserver", registry=registry).stop()
        first_start = time.perf_counter() - began
        lifecycle = measure_lifecycle(image, registry, args.rounds, args.warmup)
        scale = measure_scale(idle, registry, args.pss_count, args.list_count, args.list_rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows: dict[str, dict[str, float] | str] = {"instancelib": {
        "start": ms(lifecycle["start"]), "exec": ms(lifecycle["exec"]),
        "stop": ms(lifecycle["stop"]), "list": ms(scale["list"]),  # type: ignore[arg-type]
        "pss": statistics.median(scale["pss_kb"]),  # type: ignore[arg-type]
    }}
    rows.update(peer_rows)

    print(f"# lifecycle on {socket.gethostname()}, kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs, n={args.rounds} (medians)")
    print(f"# instancelib: first start in a process (fork-server start-up) "
          f"{first_start * 1000:.1f} ms; CLI `instance list` with {args.list_count}: "
          f"{scale['cli_list'] * 1000:.0f} ms; stop of all {scale['count']}: "  # type: ignore[operator]
          f"{scale['stop_all']:.2f} s; list({args.list_count}) cold (first call in a process): "
          f"{ms(scale['list_cold']):.1f} ms")  # type: ignore[arg-type]
    print()
    print("| runtime | start ms | exec `true` ms | stop ms | list ms | PID 1 / monitor PSS KB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        if isinstance(row, str):
            print(f"| {name} | {row} | | | | |")
            continue
        count = args.list_count if name == "instancelib" else args.pss_count
        print(f"| {name} | {row['start']:.2f} | {row['exec']:.2f} | {row['stop']:.2f} | "
              f"{row['list']:.1f} ({count}) | {row['pss']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "lifecycle": lifecycle, "scale": scale}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
