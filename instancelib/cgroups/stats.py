"""``Stats``: what an instance uses, read at once from its cgroup (or its processes).

CPU % is the CPU time the instance used over a window divided by the
window's length (100 % = one CPU busy, as docker and Singularity count):
the window since the previous sample taken through the same ``Instance``
object, or, for the first, since the instance started.  Memory usage leaves
out the inactive file cache, as docker's does (it can be reclaimed at once).
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import psutil

from instancelib import display
from instancelib.cgroups import v1
from instancelib.cgroups.tree import CgroupInfo

__all__ = ["Sample", "Stats", "sample"]


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

    def rows(self) -> list[tuple[str, str]]:
        """The reading in human units (``3.3 MiB``, ``2.1 %``), field by field."""
        return [
            ("CPU", display.percent(self.cpu_percent)),
            ("CPU time", display.duration(self.cpu_seconds)),
            ("memory", f"{display.size(self.memory_usage)} / {display.size(self.memory_limit)}"
                       f" ({display.percent(self.memory_percent)})"),
            ("block I/O", f"{display.size(self.block_read)} read / "
                          f"{display.size(self.block_write)} written"),
            ("PIDs", str(self.pids)),
            ("source", self.source),
            ("read at", display.timestamp(self.timestamp)),
        ]

    def _repr_html_(self) -> str:
        return display.key_values(f"Stats of {self.name}", self.rows())

    def _repr_pretty_(self, printer: display.Printer, cycle: bool) -> None:
        display.pretty_key_values(printer, cycle, f"Stats of {self.name}", self.rows())


def _host_memory() -> int:
    return int(psutil.virtual_memory().total)


def _cgroup_figures(info: CgroupInfo) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    cpu = info.cpu_accounting()
    if cpu is not None:
        directory, mode = cpu
        figures["cpu_ns"] = mode.cpu_ns(directory)
    memory = info.served("memory")
    if memory is not None:
        directory, mode = memory
        figures["memory"], figures["limit"] = mode.memory(directory)
    io = info.served("io")
    if io is not None:
        directory, mode = io
        figures["read"], figures["write"] = mode.io_bytes(directory)
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


def sample(name: str, pid: int, info: CgroupInfo, previous: Sample | None,
           started_ns: int) -> tuple[Stats, Sample]:
    """Read the instance's figures now; CPU % over the window since ``previous``
    (or since ``started_ns``, a ``time.time_ns()`` value, for the first)."""
    now = time.time_ns()
    if info:
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
