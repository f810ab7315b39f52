"""cgroup v1: cgroupspy for the controllers it models, plain files for the rest.

cgroupspy models memory, cpu, cpuacct, cpuset, blkio and devices; pids and
freezer (and blkio's per-device files, whose names it gets wrong) are plain
files here.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from cgroupspy import controllers

from instancelib.errors import InvalidArgument, PermissionDenied, Unsupported

__all__ = ["controller", "enable_io_accounting", "freeze", "prepare_base", "read_int",
           "read_lines", "set_value"]

_MODELLED = {
    "memory": controllers.MemoryController,
    "cpu": controllers.CpuController,
    "cpuacct": controllers.CpuAcctController,
    "cpuset": controllers.CpuSetController,
    "blkio": controllers.BlkIOController,
    "devices": controllers.DevicesController,
}
# file → cgroupspy attribute, for the files it models correctly.
_ATTRIBUTES = {
    "memory.limit_in_bytes": "limit_in_bytes",
    "memory.memsw.limit_in_bytes": "memsw_limit_in_bytes",
    "memory.soft_limit_in_bytes": "soft_limit_in_bytes",
    "cpu.cfs_period_us": "cfs_period_us",
    "cpu.cfs_quota_us": "cfs_quota_us",
    "cpu.shares": "shares",
    "cpuset.cpus": "cpus",
    "cpuset.mems": "mems",
    "blkio.weight": "weight",
}


class _Directory:
    """The node cgroupspy's controllers need: just a path (bytes, as cgroupspy's own)."""

    def __init__(self, path: str) -> None:
        self.full_path = os.fsencode(path)


def controller(name: str, directory: str) -> Any:
    """cgroupspy's controller object for a v1 cgroup directory (None if not modelled)."""
    cls = _MODELLED.get(name)
    return cls(_Directory(directory)) if cls is not None else None


def _cpu_set(text: str) -> set[int]:
    numbers: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        numbers.update(range(int(low), int(high or low) + 1))
    return numbers


def set_value(name: str, directory: str, filename: str, value: str) -> None:
    """Write one setting into a v1 cgroup, through cgroupspy where it models the file.

    Raises:
        Unsupported: the kernel has no such file here.
        InvalidArgument: the kernel refused the value.
    """
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
        raise Unsupported(f"cannot set {filename}: this kernel's {name} cgroup (v1) has no "
                          "such file")
    try:
        attribute = _ATTRIBUTES.get(filename)
        ctrl = controller(name, directory)
        if ctrl is not None and attribute is not None:
            converted: Any = _cpu_set(value) if filename.startswith("cpuset.") else int(value)
            setattr(ctrl, attribute, converted)
        else:
            with open(path, "w") as f:
                f.write(value)
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW, errno.EBUSY):
            raise InvalidArgument(f"the kernel refused {filename} = {value!r} "
                                  f"({err.strerror})") from err
        if err.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(f"cannot set {filename}", path=path, errno=err.errno) from err
        raise Unsupported(f"cannot set {filename} = {value!r}: {err.strerror}") from err


def prepare_base(name: str, base: str) -> None:
    """Make our tree's top directory in a v1 hierarchy, ready for children.

    cpuset children need CPUs and memory nodes before a process may join:
    the top copies the hierarchy root's and makes children inherit them.
    """
    try:
        os.mkdir(base)
    except FileExistsError:
        return
    if name == "cpuset":
        root = os.path.dirname(base)
        ctrl = controller("cpuset", base)
        parent = controller("cpuset", root)
        ctrl.cpus = parent.cpus
        ctrl.mems = parent.mems
        ctrl.clone_children = True


_io_accounting: list[str] = []


def enable_io_accounting(base: str) -> None:
    """Make the kernel count block I/O per v1 blkio cgroup.

    cgroup v1 keeps ``blkio.throttle.io_service_bytes`` only on disks where
    throttling is active, and it becomes active when any cgroup gets a
    throttle setting for that disk.  A setting of 0 means "no limit", so
    writing ``MAJ:MIN 0`` into our tree's top activates counting (for every
    cgroup, as Docker's first ``--device-write-bps`` would) and limits
    nothing.  Once per process and base; disks that refuse are skipped.
    """
    if base in _io_accounting:
        return
    _io_accounting.append(base)
    target = os.path.join(base, "blkio.throttle.read_bps_device")
    try:
        disks = os.listdir("/sys/block")
    except OSError:
        return
    for disk in disks:
        try:
            with open(f"/sys/block/{disk}/dev") as f:
                number = f.read().strip()
            with open(target, "w") as f:
                f.write(f"{number} 0")
        except OSError:
            continue  # no queue for throttling (e.g. an empty zram device)


def read_int(directory: str, filename: str) -> int | None:
    """An integer file's value (None when absent or unreadable)."""
    try:
        with open(os.path.join(directory, filename)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_lines(directory: str, filename: str) -> list[str]:
    try:
        with open(os.path.join(directory, filename)) as f:
            return f.read().splitlines()
    except OSError:
        return []


def freeze(directory: str, frozen: bool, *, timeout: float = 5.0) -> None:
    """Freeze or thaw a v1 freezer cgroup and wait until the state is reached."""
    state = "FROZEN" if frozen else "THAWED"
    path = os.path.join(directory, "freezer.state")
    with open(path) as f:
        if f.read().strip() == state:
            return  # already there: no write (it takes the kernel's cgroup lock)
    with open(path, "w") as f:
        f.write(state)
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as f:
            if f.read().strip() == state:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the freezer did not reach {state}")
        time.sleep(0.001)
