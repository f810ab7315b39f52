"""``Stats``: what an instance uses, read at once from its cgroup (or its processes).

CPU % is the CPU time the instance used over a window divided by the
window's length (100 % = one CPU busy, as docker and Singularity count):
the window since the previous sample taken through the same ``Instance``
object, or, for the first, since the instance started.  Memory usage leaves
out the inactive file cache, as docker's does (it can be reclaimed at once).
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
import psutil

from instancelib.cgroups import v1, v2
from instancelib.cgroups.tree import CgroupInfo

__all__ = ["Sample", "Stats", "format_binary", "format_decimal", "sample"]


@attrs.frozen
class Sample:
    """Raw counters at one moment (for CPU % across two samples)."""

    cpu_ns: int
    wall_ns: int


@attrs.frozen
class Stats:
    """One reading of an instance's resource use.

    Attributes:
        name: the instance.
        timestamp: when it was read (seconds since the epoch).
        cpu_percent: CPU use over the window (100.0 = one CPU); see the module doc.
        cpu_seconds: CPU time used since the instance started.
        memory_usage: bytes in use (without the inactive file cache).
        memory_limit: the memory limit, or the host's memory when there is none.
        memory_percent: ``memory_usage`` as a percentage of ``memory_limit``.
        block_read, block_write: bytes read from and written to block devices.
        pids: processes (and threads, where the pids controller counts) in the instance.
        source: where the figures come from: ``"cgroup v2"``, ``"cgroup v1"``,
            ``"cgroup hybrid"`` (v1 controllers, v2 core), or ``"processes"``
            (no cgroup: summed over the instance's process tree, an estimate).
    """

    name: str
    timestamp: float
    cpu_percent: float
    cpu_seconds: float
    memory_usage: int
    memory_limit: int
    memory_percent: float
    block_read: int
    block_write: int
    pids: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        """The reading as JSON-ready values."""
        return attrs.asdict(self)


def _host_memory() -> int:
    return int(psutil.virtual_memory().total)


def _read(directory: str, filename: str) -> str:
    return v2.read(os.path.join(directory, filename))


def _keyed(text: str) -> dict[str, int]:
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


def _cgroup_figures(info: CgroupInfo) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    # CPU: cgroup v2 counts it in every cgroup (cpu.stat), v1 in cpuacct.
    if info.v2 is not None:
        figures["cpu_ns"] = _keyed(_read(info.v2, "cpu.stat")).get("usage_usec", 0) * 1000
    elif "cpuacct" in info.v1:
        figures["cpu_ns"] = v1.read_int(info.v1["cpuacct"], "cpuacct.usage") or 0
    memory = info.directory("memory")
    if memory is not None and info.controllers.get("memory") == "v2":
        stat = _keyed(_read(memory, "memory.stat"))
        current = int(_read(memory, "memory.current"))
        figures["memory"] = max(0, current - stat.get("inactive_file", 0))
        limit = _read(memory, "memory.max").strip()
        figures["limit"] = None if limit == "max" else int(limit)
    elif memory is not None:
        ctrl = v1.controller("memory", memory)
        stat = ctrl.stat
        figures["memory"] = max(0, ctrl.usage_in_bytes - stat.get("total_inactive_file", 0))
        figures["limit"] = ctrl.limit_in_bytes
    io = info.directory("io")
    read = write = 0
    if io is not None and info.controllers.get("io") == "v2":
        for line in _read(io, "io.stat").splitlines():
            fields = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
            read += int(fields.get("rbytes", 0))
            write += int(fields.get("wbytes", 0))
    elif io is not None:
        lines = (v1.read_lines(io, "blkio.throttle.io_service_bytes_recursive")
                 or v1.read_lines(io, "blkio.io_service_bytes_recursive"))
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[1] == "Read":
                read += int(parts[2])
            elif len(parts) == 3 and parts[1] == "Write":
                write += int(parts[2])
    figures["read"], figures["write"] = read, write
    pids = info.directory("pids")
    if pids is not None:
        figures["pids"] = v1.read_int(pids, "pids.current") or 0
    else:
        directory = info.v2 or next(iter(info.v1.values()))
        figures["pids"] = len(v1.read_lines(directory, "cgroup.procs"))
    return figures


def _process_figures(pid: int) -> dict[str, Any]:
    """Figures summed over a process tree (no cgroup to ask)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        processes = []
    cpu = memory = read = write = 0.0
    counted = 0
    for process in processes:
        try:
            with process.oneshot():
                times = process.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                memory += process.memory_info().rss
                try:
                    counters = process.io_counters()
                    read += counters.read_bytes
                    write += counters.write_bytes
                except (psutil.AccessDenied, AttributeError):
                    pass
            counted += 1
        except psutil.Error:
            continue
    return {"cpu_ns": int(cpu * 1e9), "memory": int(memory), "limit": None,
            "read": int(read), "write": int(write), "pids": counted}


def sample(name: str, pid: int, info: CgroupInfo | None, previous: Sample | None,
           started_ns: int) -> tuple[Stats, Sample]:
    """Read the instance's figures now; CPU % over the window since ``previous``
    (or since ``started_ns``, a ``time.time_ns()`` value, for the first)."""
    now = time.time_ns()
    if info is not None:
        figures = _cgroup_figures(info)
        source = f"cgroup {info.version}"
    else:
        figures = _process_figures(pid)
        source = "processes"
    current = Sample(cpu_ns=int(figures.get("cpu_ns", 0)), wall_ns=now)
    base = previous or Sample(cpu_ns=0, wall_ns=started_ns)
    elapsed = max(1, current.wall_ns - base.wall_ns)
    percent = max(0.0, (current.cpu_ns - base.cpu_ns) / elapsed * 100.0)
    host = _host_memory()
    limit = figures.get("limit")
    limit = host if limit is None or limit <= 0 or limit > host else int(limit)
    memory = int(figures.get("memory", 0))
    stats = Stats(
        name=name, timestamp=now / 1e9, cpu_percent=round(percent, 2),
        cpu_seconds=current.cpu_ns / 1e9, memory_usage=memory, memory_limit=limit,
        memory_percent=round(memory / limit * 100.0, 2) if limit else 0.0,
        block_read=int(figures.get("read", 0)), block_write=int(figures.get("write", 0)),
        pids=int(figures.get("pids", 0)), source=source,
    )
    return stats, current


def _scaled(size: float, step: float, units: tuple[str, ...], digits: int) -> str:
    value = float(size)
    index = 0
    while value >= step and index < len(units) - 1:
        value /= step
        index += 1
    return f"{value:.{digits}g}{units[index]}"


def format_binary(size: float) -> str:
    """Bytes as docker prints memory: ``3.27MiB`` (4 significant digits, binary units)."""
    return _scaled(size, 1024.0, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 4)


def format_decimal(size: float) -> str:
    """Bytes as docker prints block I/O: ``16.4kB`` (3 significant digits, SI units)."""
    return _scaled(size, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB"), 3)
