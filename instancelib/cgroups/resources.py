"""How ``Limits`` become cgroup files, and how figures are read back: one mode per version.

The conversions are those of Apptainer and runc:

============================  ==============================  ==================================
limit                         cgroup v2                       cgroup v1
============================  ==============================  ==================================
memory                        memory.max                      memory.limit_in_bytes
memory_reservation            memory.low                      memory.soft_limit_in_bytes
memory_swap (memory + swap)   memory.swap.max = swap - memory memory.memsw.limit_in_bytes
cpus (and cpu_period)         cpu.max "quota period"          cpu.cfs_quota_us, cpu.cfs_period_us
cpu_shares                    cpu.weight (OCI conversion)     cpu.shares
cpuset_cpus, cpuset_mems      cpuset.cpus, cpuset.mems        cpuset.cpus, cpuset.mems
blkio_weight                  io.bfq.weight, else io.weight   blkio.weight (blkio.bfq.weight)
blkio_weight_device           io.bfq.weight / io.weight       blkio.weight_device (bfq.)
device_{read,write}_{bps,iops} io.max                         blkio.throttle.*_device
pids_limit                    pids.max                        pids.max
unified                       the files as given              (none: Unsupported)
============================  ==============================  ==================================

As in crun, the difference between cgroup v1 and v2 is a *mode* (``V2``,
``V1``) that the writers and readers are handed, not a branch at each use:
``resolve`` asks each mode for its settings, ``apply`` writes them through
it, and ``stats`` reads usage through the mode serving each controller.
Where BFQ is the I/O scheduler its weight file is used, chosen by one rule
(``_weight_file``) for both versions.  Every function takes the cgroup's
directories as arguments: the mapping works (and is tested) on any tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import attrs

from instancelib.cgroups import v1, v2
from instancelib.cgroups.limits import CPU_PERIOD, Limits
from instancelib.errors import Unsupported

__all__ = ["MODES", "V1", "V1_NAMES", "V2", "Mode", "Setting", "apply", "blkio_to_io_weight",
           "resolve", "shares_to_weight", "v2_name_of"]

# Resource controllers (cgroup v2 names) and their v1 counterparts.
V1_NAMES = {"memory": ("memory",), "cpu": ("cpu", "cpuacct"), "cpuset": ("cpuset",),
            "io": ("blkio",), "pids": ("pids",)}

HasFile = Callable[[str, str], bool]
"""``has_file(controller, filename)``: whether the directory serving ``controller`` has it."""


@attrs.frozen
class Setting:
    """One value to write: ``filename`` in the directory of ``controller`` (the mode's name)."""

    controller: str
    filename: str
    value: str


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cpu.weight (1..10000), the OCI runtime conversion."""
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """blkio.weight (10..1000) to io.weight (1..10000), the OCI runtime conversion."""
    return 1 + ((weight - 10) * 9999) // 990


def v2_name_of(controller: str) -> str:
    """The v2 name of a v1 controller (``blkio`` -> ``io``); other names unchanged."""
    for name, v1_names in V1_NAMES.items():
        if controller in v1_names:
            return name
    return controller


def _weight_file(has_file: HasFile, controller: str, preferred: tuple[str, ...],
                 classic: str) -> str:
    """The first weight file of ``preferred`` the cgroup offers; else the classic one.

    The one BFQ rule.  Each mode lists its files in the order it prefers
    them: cgroup v2 takes BFQ's
    ``io.bfq.weight`` when the disk's scheduler offers it (on the blkio
    scale) over ``io.weight`` (converted); cgroup v1 takes ``blkio.weight``,
    else BFQ's ``blkio.bfq.weight``.  When none exists the classic name is
    returned, for ``resolve`` to report.
    """
    return next((name for name in preferred if has_file(controller, name)), classic)


class Mode(Protocol):
    """What a cgroup version knows: the files limits become, and how usage is read."""

    version: str

    def settings(self, limits: Limits, has_file: HasFile) -> list[Setting]: ...

    def write(self, directory: str, setting: Setting) -> None: ...

    def cpu_ns(self, directory: str) -> int: ...

    def memory(self, directory: str) -> tuple[int, int | None]: ...

    def io_bytes(self, directory: str) -> tuple[int, int]: ...


def _keyed(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


class _V2:
    version = "v2"
    _WEIGHT = ("io.bfq.weight", "io.weight")

    def settings(self, limits: Limits, has_file: HasFile) -> list[Setting]:
        files: list[tuple[str, str]] = []
        if limits.memory_reservation is not None:
            files.append(("memory.low", str(limits.memory_reservation)))
        if limits.memory is not None:
            files.append(("memory.max", str(limits.memory)))
        if limits.memory_swap is not None and limits.memory is not None:
            swap = "max" if limits.memory_swap == -1 else str(limits.memory_swap - limits.memory)
            files.append(("memory.swap.max", swap))
        if limits.cpus is not None:
            period = limits.cpu_period or CPU_PERIOD
            files.append(("cpu.max", f"{round(limits.cpus * period)} {period}"))
        if limits.cpu_shares is not None:
            files.append(("cpu.weight", str(shares_to_weight(limits.cpu_shares))))
        if limits.cpuset_cpus is not None:
            files.append(("cpuset.cpus", limits.cpuset_cpus))
        if limits.cpuset_mems is not None:
            files.append(("cpuset.mems", limits.cpuset_mems))
        if limits.blkio_weight is not None or limits.blkio_weight_device:
            weight = _weight_file(has_file, "io", self._WEIGHT, "io.weight")
            scale = (lambda w: w) if weight == "io.bfq.weight" else blkio_to_io_weight
            if limits.blkio_weight is not None:
                files.append((weight, str(scale(limits.blkio_weight))))
            for device in limits.blkio_weight_device:
                files.append((weight, f"{device.key} {scale(device.value)}"))
        for key, devices in (("rbps", limits.device_read_bps), ("wbps", limits.device_write_bps),
                             ("riops", limits.device_read_iops),
                             ("wiops", limits.device_write_iops)):
            files.extend(("io.max", f"{d.key} {key}={d.value}") for d in devices)
        if limits.pids_limit is not None:
            files.append(("pids.max",
                          "max" if limits.pids_limit == -1 else str(limits.pids_limit)))
        files.extend(limits.unified.items())
        return [Setting(name.partition(".")[0], name, value) for name, value in files]

    def write(self, directory: str, setting: Setting) -> None:
        v2.set_value(os.path.join(directory, setting.filename), setting.value, setting.filename)

    def cpu_ns(self, directory: str) -> int:
        return _keyed(v2.read(os.path.join(directory, "cpu.stat"))).get("usage_usec", 0) * 1000

    def memory(self, directory: str) -> tuple[int, int | None]:
        stat = _keyed(v2.read(os.path.join(directory, "memory.stat")))
        current = int(v2.read(os.path.join(directory, "memory.current")))
        limit = v2.read(os.path.join(directory, "memory.max")).strip()
        usage = max(0, current - stat.get("inactive_file", 0))
        return usage, None if limit == "max" else int(limit)

    def io_bytes(self, directory: str) -> tuple[int, int]:
        read = write = 0
        for line in v2.read(os.path.join(directory, "io.stat")).splitlines():
            fields = dict(item.split("=", 1) for item in line.split()[1:] if "=" in item)
            read += int(fields.get("rbytes", 0))
            write += int(fields.get("wbytes", 0))
        return read, write


class _V1:
    version = "v1"
    _WEIGHT = ("blkio.weight", "blkio.bfq.weight")
    _WEIGHT_DEVICE = ("blkio.weight_device", "blkio.bfq.weight_device")

    def settings(self, limits: Limits, has_file: HasFile) -> list[Setting]:
        if limits.unified:
            raise Unsupported("unified limits are cgroup v2 settings; this host runs the "
                              f"controllers {', '.join(sorted(limits.controllers()))} on "
                              "cgroup v1: " + ", ".join(sorted(limits.unified)))
        out: list[tuple[str, str, str]] = []
        if limits.memory is not None:
            out.append(("memory", "memory.limit_in_bytes", str(limits.memory)))
        if limits.memory_swap is not None:
            out.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory_swap)))
        if limits.memory_reservation is not None:
            out.append(("memory", "memory.soft_limit_in_bytes", str(limits.memory_reservation)))
        if limits.cpus is not None:
            period = limits.cpu_period or CPU_PERIOD
            out.append(("cpu", "cpu.cfs_period_us", str(period)))
            out.append(("cpu", "cpu.cfs_quota_us", str(round(limits.cpus * period))))
        if limits.cpu_shares is not None:
            out.append(("cpu", "cpu.shares", str(limits.cpu_shares)))
        if limits.cpuset_cpus is not None:
            out.append(("cpuset", "cpuset.cpus", limits.cpuset_cpus))
        if limits.cpuset_mems is not None:
            out.append(("cpuset", "cpuset.mems", limits.cpuset_mems))
        if limits.blkio_weight is not None:
            out.append(("blkio", _weight_file(has_file, "blkio", self._WEIGHT,
                                     "blkio.weight"),
                        str(limits.blkio_weight)))
        for device in limits.blkio_weight_device:
            out.append(("blkio", _weight_file(has_file, "blkio", self._WEIGHT_DEVICE,
                                     "blkio.weight_device"),
                        f"{device.key} {device.value}"))
        for name, devices in (("read_bps", limits.device_read_bps),
                              ("write_bps", limits.device_write_bps),
                              ("read_iops", limits.device_read_iops),
                              ("write_iops", limits.device_write_iops)):
            out.extend(("blkio", f"blkio.throttle.{name}_device", f"{d.key} {d.value}")
                       for d in devices)
        if limits.pids_limit is not None:
            out.append(("pids", "pids.max",
                        "max" if limits.pids_limit == -1 else str(limits.pids_limit)))
        return [Setting(*item) for item in out]

    def write(self, directory: str, setting: Setting) -> None:
        v1.set_value(setting.controller, directory, setting.filename, setting.value)

    def cpu_ns(self, directory: str) -> int:
        return v1.read_int(directory, "cpuacct.usage") or 0

    def memory(self, directory: str) -> tuple[int, int | None]:
        ctrl = v1.controller("memory", directory)
        stat = ctrl.stat
        return max(0, ctrl.usage_in_bytes - stat.get("total_inactive_file", 0)), \
            ctrl.limit_in_bytes

    def io_bytes(self, directory: str) -> tuple[int, int]:
        read = write = 0
        lines = (v1.read_lines(directory, "blkio.throttle.io_service_bytes_recursive")
                 or v1.read_lines(directory, "blkio.io_service_bytes_recursive"))
        for line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[1] == "Read":
                read += int(parts[2])
            elif len(parts) == 3 and parts[1] == "Write":
                write += int(parts[2])
        return read, write


V2: Mode = _V2()
V1: Mode = _V1()
MODES: dict[str, Mode] = {"v2": V2, "v1": V1}


def resolve(v2_dir: str | None, v1_dirs: dict[str, str], controllers: dict[str, str],
            limits: Limits) -> list[tuple[str, Setting, Mode]]:
    """What enforces ``limits`` in these directories: ``(directory, setting, mode)``, in order.

    ``controllers`` says which version serves each controller (v2 names).
    The directories are a cgroup's, or the bases' (the same files exist
    there): checking the bases finds a limit this kernel cannot enforce
    before anything starts.

    Raises:
        Unsupported: a file the kernel lacks (no CPU quota support, no swap
            accounting, no weight file without a proportional I/O scheduler...).
    """
    out: list[tuple[str, Setting, Mode]] = []
    if v2_dir is not None and "v2" in controllers.values():
        v2_base = v2_dir

        def in_v2(_controller: str, filename: str) -> bool:
            return os.path.exists(os.path.join(v2_base, filename))

        for setting in V2.settings(limits, in_v2):
            if controllers.get(setting.controller, "v2") != "v2" \
                    and setting.controller in V1_NAMES:
                continue
            if not in_v2(setting.controller, setting.filename):
                raise Unsupported(f"cannot set {setting.filename}: this kernel's cgroup v2 has "
                                  "no such file")
            out.append((v2_dir, setting, V2))
    if "v1" in controllers.values():

        def in_v1(controller: str, filename: str) -> bool:
            directory = v1_dirs.get(controller)
            return directory is not None and os.path.exists(os.path.join(directory, filename))

        for setting in V1.settings(limits, in_v1):
            if controllers.get(v2_name_of(setting.controller)) != "v1":
                continue
            directory = v1_dirs.get(setting.controller)
            if directory is None:
                raise Unsupported(f"cannot set {setting.filename}: no {setting.controller} "
                                  "cgroup v1 hierarchy")
            if not in_v1(setting.controller, setting.filename):
                raise Unsupported(f"cannot set {setting.filename}: this kernel's "
                                  f"{setting.controller} cgroup (v1) has no such file")
            out.append((directory, setting, V1))
    return out


def apply(v2_dir: str | None, v1_dirs: dict[str, str], controllers: dict[str, str],
          limits: Limits) -> None:
    """Write ``limits`` into the cgroup's files (see ``resolve``)."""
    for directory, setting, mode in resolve(v2_dir, v1_dirs, controllers, limits):
        mode.write(directory, setting)
