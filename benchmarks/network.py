#!/usr/bin/env python3
"""Network benchmark: what a network namespace, a bridge and a ptp link add to start and stop.

Medians over ``-n`` rounds, interleaved, of ``Instance.start()`` and ``stop()``
with ``network=None`` (the host's), ``"none"``, ``"bridge"``, ``"ptp"`` and
``"pasta"`` (the user-mode network ordinary users get); and
TCP throughput from the host side to an instance's address and through a
port map on 127.0.0.1 (``--mb`` MiB, the instance's busybox ``nc`` discarding
them).  With podman installed, its
``--network bridge`` start and stop in the same run (storage in a temporary
directory), for comparison.

It runs as root inside a network (and mount) namespace of its own (it
re-executes itself under ``unshare --net --mount``), which stands for the
host: the bridge, the veths and the traffic never touch the machine's
network.  A veth pair with an address and a default route there stands for
the host's outside link, which ``"pasta"`` copies into its instances.

    python3 benchmarks/network.py [-n 20] [--mb 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKER = "INSTANCELIB_BENCH_NETNS"
IDLE = "#!/bin/sh\ntrap 'exit 0' TERM INT\nsleep 1000000 &\nwait\n"
SINK = "#!/bin/sh\nwhile :; do nc -l -p 5001 > /dev/null; done\n"


def _rounds(image, registry, kinds, n):  # type: ignore[no-untyped-def]
    from instancelib import Instance  # noqa: PLC0415

    for kind in kinds:  # warm-up: fork-server, network helper, bridge
        Instance.start(image, "warm", registry=registry, network=kind).stop()
    results: dict[str, list[tuple[float, float]]] = {str(k): [] for k in kinds}
    for round_ in range(n):
        for kind in kinds:
            began = time.perf_counter()
            instance = Instance.start(image, f"r{round_}", registry=registry, network=kind)
            started = time.perf_counter()
            instance.stop()
            results[str(kind)].append((started - began, time.perf_counter() - started))
    return results


def _throughput(image, registry, megabytes: int,  # type: ignore[no-untyped-def]
                mapped: bool) -> float:
    from instancelib import Instance  # noqa: PLC0415

    instance = Instance.start(image, f"sink{int(mapped)}", registry=registry, network="bridge",
                              network_args=["portmap=15001:5001/tcp"] if mapped else [])
    target = ("127.0.0.1", 15001) if mapped else (instance.ip, 5001)
    try:
        block = b"\0" * (1 << 20)
        deadline = time.monotonic() + 10
        while True:
            try:
                connection = socket.create_connection(target, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with connection:
            began = time.perf_counter()
            for _ in range(megabytes):
                connection.sendall(block)
            connection.shutdown(socket.SHUT_WR)
            connection.recv(1)
            elapsed = time.perf_counter() - began
        return megabytes / elapsed
    finally:
        instance.stop()


CGROUP_FS = Path("/sys/fs/cgroup")


def _cgroup_tops() -> set[Path]:
    """The directories at the top of every cgroup hierarchy (v1 mounts, or the v2 root)."""
    hierarchies = [CGROUP_FS] if (CGROUP_FS / "cgroup.controllers").exists() else [
        d for d in CGROUP_FS.iterdir() if d.is_dir() and not d.is_symlink()]
    return {entry for hierarchy in hierarchies for entry in hierarchy.iterdir()
            if entry.is_dir()}


def _remove_cgroups(tops: set[Path]) -> None:
    """rmdir each cgroup tree, deepest first (an rmdir removes only an empty cgroup)."""
    for top in tops:
        for directory in sorted((Path(d) for d, _, _ in os.walk(top)),
                                key=lambda p: len(p.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError as err:
                print(f"# cannot remove the cgroup {directory} podman made: {err.strerror}",
                      file=sys.stderr)


def _podman(rootfs: Path, work: Path, n: int) -> str:
    """podman's bridge start/stop. With the cgroupfs manager (no systemd here) podman
    makes cgroups of its own (``libpod_parent``) that ``system reset`` leaves: the ones
    this run made are removed here."""
    podman = shutil.which("podman")
    if podman is None:
        return "podman not installed"
    cgroups_before = _cgroup_tops()
    try:
        return _podman_rounds(podman, rootfs, work, n)
    finally:
        _remove_cgroups(_cgroup_tops() - cgroups_before)


def _podman_rounds(podman: str, rootfs: Path, work: Path, n: int) -> str:
    base = [podman, "--root", str(work / "podman-root"), "--runroot", str(work / "podman-run"),
            "--storage-driver", "vfs"]
    try:
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                             check=True).stdout
        subprocess.run([*base, "import", "-", "bench-idle"], input=tar, capture_output=True,
                       check=True)
        starts, stops = [], []
        for round_ in range(n):
            began = time.perf_counter()
            subprocess.run([*base, "run", "-d", "--name", f"p{round_}", "--network", "bridge",
                            "bench-idle", "sleep", "1000000"], capture_output=True, check=True)
            started = time.perf_counter()
            subprocess.run([*base, "rm", "-f", "-t", "0", f"p{round_}"], capture_output=True,
                           check=True)
            starts.append(started - began)
            stops.append(time.perf_counter() - started)
    except subprocess.CalledProcessError as err:
        return f"podman failed: {err.stderr.decode(errors='replace').strip()[-120:]}"
    finally:
        subprocess.run([*base, "system", "reset", "-f"], capture_output=True, check=False)
    return (f"{statistics.median(starts) * 1000:.1f} | {statistics.median(stops) * 1000:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="rounds (default 20)")
    parser.add_argument("--mb", type=int, default=256, help="MiB for the throughput test")
    parser.add_argument("--no-podman", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    if os.environ.get(MARKER) != "1":
        env = dict(os.environ, **{MARKER: "1"})
        # A mount namespace too: podman's network makes /run/netns a mount point.
        return subprocess.run(["unshare", "--net", "--mount", "--propagation", "private",
                               sys.executable, *sys.argv], env=env, check=False).returncode

    from instancelib import Image, InstanceRegistry  # noqa: PLC0415
    from instancelib.build.busybox import make_busybox_rootfs  # noqa: PLC0415
    from instancelib.linux import netns  # noqa: PLC0415

    netns.bring_up("lo")
    # podman makes /run/netns (and more under /run): a /run of this namespace's own.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "bench-run", "/run"], check=True)
    for command in (["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1"],
                    ["ip", "addr", "add", "198.51.100.2/24", "dev", "up0"],
                    ["ip", "link", "set", "up0", "up"], ["ip", "link", "set", "up1", "up"],
                    ["ip", "route", "add", "default", "via", "198.51.100.1"]):
        subprocess.run(command, check=True)
    work = Path(tempfile.mkdtemp(prefix="instancelib-bench-network-"))
    os.environ["INSTANCELIB_NETWORK_STATE"] = str(work / "state")
    try:
        registry = InstanceRegistry(work / "registry")
        idle = Image(make_busybox_rootfs(work / "idle", startscript=IDLE))
        sink = Image(make_busybox_rootfs(work / "sink", startscript=SINK))
        kinds = [None, "none", "bridge", "ptp", "pasta"]
        results = _rounds(idle, registry, kinds, args.n)
        rate = _throughput(sink, registry, args.mb, mapped=False)
        mapped_rate = _throughput(sink, registry, args.mb, mapped=True)
        peer = "skipped" if args.no_podman else _podman(work / "idle", work, min(args.n, 10))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# network on {os.uname().nodename}, kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs, n={args.n} (medians), in a network namespace of its own")
    print("\n| network | start ms | stop ms |\n|---|---:|---:|")
    host_start = statistics.median(s for s, _ in results["None"])
    host_stop = statistics.median(t for _, t in results["None"])
    for kind, values in results.items():
        start = statistics.median(s for s, _ in values)
        stop = statistics.median(t for _, t in values)
        extra = "" if kind == "None" else \
            f" (+{(start - host_start) * 1000:.1f} / +{(stop - host_stop) * 1000:.1f})"
        label = "host (None)" if kind == "None" else kind
        print(f"| {label}{extra} | {start * 1000:.2f} | {stop * 1000:.2f} |")
    print(f"| podman --network bridge | {peer} |")
    print(f"\nTCP, {args.mb} MiB: to the instance's address (bridge) {rate:.0f} MiB/s; "
          f"through a port map on 127.0.0.1 {mapped_rate:.0f} MiB/s "
          f"({mapped_rate / rate * 100:.0f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
