"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def instance_processes() -> set[int]:
    """Host PIDs of live instancelib PID 1 processes (from any registry)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read(64)
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline.startswith(b"instancelib-init:") and state not in (b"Z", b"X"):
            found.add(int(entry))
    return found


def host_mounts() -> set[tuple[str, str]]:
    """(mount point, fs type) of every mount the host sees."""
    mounts = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            mounts.add((fields.split()[4], tail.split()[0]))
    return mounts


def loop_devices() -> set[tuple[str, str]]:
    """(device, backing file) of every attached loop device."""
    found = set()
    for name in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                found.add((name, f.read().strip()))
        except OSError:
            continue
    return found


def _holds_only_spares(directory: str) -> bool:
    """A cgroup the fork-server keeps for its spare PID 1 (it holds the spare, nothing else)."""
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            pids = f.read().split()
    except OSError:
        return False
    if not pids:
        return False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read(32).startswith(b"instancelib-spare"):
                    return False
        except OSError:
            return False
    return True


def our_cgroups(*, spares: bool = True) -> set[str]:
    """instancelib's cgroups (the directories under its trees, in every hierarchy).

    ``spares=False`` leaves out those of the fork-servers' spare PID 1s.
    """
    found = set()
    for top in ("/sys/fs/cgroup", *(f"/sys/fs/cgroup/{d}" for d in os.listdir("/sys/fs/cgroup")
                                    if os.path.isdir(f"/sys/fs/cgroup/{d}"))):
        for base in (os.path.join(top, "instancelib"),
                     os.path.join(top, "machine.slice", "instancelib")):
            try:
                entries = os.scandir(base)
            except OSError:
                continue
            with entries:
                found.update(entry.path for entry in entries if entry.is_dir()
                             and (spares or not _holds_only_spares(entry.path)))
    return found


def our_cgroup_tops() -> set[str]:
    """instancelib's tree tops (``.../instancelib``) in every hierarchy."""
    found = set()
    for top in ("/sys/fs/cgroup", *(f"/sys/fs/cgroup/{d}" for d in os.listdir("/sys/fs/cgroup")
                                    if os.path.isdir(f"/sys/fs/cgroup/{d}"))):
        for base in (os.path.join(top, "instancelib"),
                     os.path.join(top, "machine.slice", "instancelib")):
            if os.path.isdir(base):
                found.add(base)
    return found


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def instance_pids(instance: Any) -> list[int]:
    """Host PIDs of every process in the instance's PID namespace."""
    target = os.readlink(f"/proc/{instance.pid}/ns/pid")
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def network_links() -> set[str]:
    """The network interfaces of this process's network namespace."""
    with open("/proc/net/dev") as f:
        return {line.split(":")[0].strip() for line in f.readlines()[2:]}


def routing_state() -> tuple[str, bool]:
    """This namespace's IPv4 forwarding setting, and whether instancelib's nf_tables table is
    there (both are changed only in network namespaces the tests make)."""
    from instancelib.linux import netns  # noqa: PLC0415

    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forwarding = f.read().strip()
    if os.geteuid() != 0:
        return forwarding, False  # nf_tables answers only CAP_NET_ADMIN (and users make none)
    return forwarding, netns.nft_exists(netns.NFPROTO_IPV4, "instancelib")


def cgroup_tops() -> set[str]:
    """The cgroups at the top of every hierarchy, instancelib's own trees left out."""
    root = "/sys/fs/cgroup"
    hierarchies = [root] if os.path.exists(f"{root}/cgroup.controllers") else [
        f"{root}/{d}" for d in os.listdir(root)
        if os.path.isdir(f"{root}/{d}") and not os.path.islink(f"{root}/{d}")]
    return {f"{h}/{entry}" for h in hierarchies for entry in os.listdir(h)
            if os.path.isdir(f"{h}/{entry}") and entry not in ("instancelib", "machine.slice")}


def remove_cgroup_trees(tops: Sequence[Path], timeout: float = 10.0) -> None:
    """Remove cgroups a test made (kill what its processes left in them, rmdir it all).

    Only for trees the test itself made: every process in them is the test's.
    """
    deadline = time.monotonic() + timeout
    while any(top.exists() for top in tops) and time.monotonic() < deadline:
        for top in tops:
            for directory in sorted((Path(d) for d, _, _ in os.walk(top)),
                                    key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    for pid in (directory / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    directory.rmdir()
        time.sleep(0.05)
    left = [str(top) for top in tops if top.exists()]
    assert not left, f"could not remove {left}"
