"""An instance's cgroup: where it goes, which hierarchy serves each controller, its life.

Hosts differ:

- pure cgroup v2 (most hosts today): one hierarchy; controllers are enabled
  in ``cgroup.subtree_control`` on the way down to our tree;
- hybrid (v1 controllers, plus a cgroup2 mount without controllers, as on
  this project's build machines): v1 serves the resource controllers, the
  v2 mount still gives ``cgroup.freeze`` and ``cgroup.kill``;
- pure v1: v1 for everything, the freezer for pausing and killing.

So the choice is made per controller (``CgroupInfo.controllers``).  Root's
instances live under ``/instancelib`` (``/machine.slice/instancelib`` where
systemd manages the host) in every hierarchy; an ordinary user's only in a
cgroup v2 subtree delegated to them (systemd's user manager); without one an
ordinary user gets no cgroup.  A limit that no hierarchy can enforce raises
``Unsupported`` before anything starts.

The instance's PID 1 joins its cgroups itself, before it does anything else
(``procs_files``), so no process of the instance ever runs outside them;
commands run by ``exec`` join them before they start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import attrs

from instancelib.cgroups import caller, resources, v1, v2
from instancelib.cgroups.limits import Limits
from instancelib.cgroups.resources import V1_NAMES
from instancelib.errors import Unsupported
from instancelib.linux import cgroupdirs
from instancelib.linux.userns import has_host_root

__all__ = ["CGROUP_PARENTS", "NO_CGROUP", "TREE", "V1_NAMES", "CgroupInfo", "CgroupPlan",
           "Hierarchies", "adopt", "detect", "in_our_tree", "plan", "relative"]

log = logging.getLogger("instancelib")

TREE = "instancelib"
# Where an instance's cgroup goes: our own tree (the default), or below the caller's cgroup
# (``instancelib.cgroups.caller``).
CGROUP_PARENTS = ("instancelib", "caller")
# What an instance always gets where available: enough for stats, pause and kill, and
# cpuset, so that a start with CPU-set limits uses the same hierarchies as one without
# (the fork-server's spare PID 1, born in a cgroup of those hierarchies, then fits both).
ALWAYS_CONTROLLERS = ("memory", "cpu", "io", "pids", "cpuset")


@attrs.frozen
class Hierarchies:
    """The cgroup hierarchies mounted on this host."""

    v2_mount: str | None
    v1_mounts: dict[str, str]  # controller → mount point


_detected: list[Hierarchies] = []


def detect(mountinfo: str = "/proc/self/mountinfo") -> Hierarchies:
    """The cgroup mounts (cached per process: mounts of cgroup hierarchies do not move)."""
    if _detected and mountinfo == "/proc/self/mountinfo":
        return _detected[0]
    v2_mount = None
    v1: dict[str, str] = {}
    with open(mountinfo) as f:
        for line in f:
            before, _, after = line.partition(" - ")
            fields = before.split()
            fstype, _source, options = [*after.split(), "", "", ""][:3]
            if len(fields) < 5 or fields[3] != "/":
                continue  # a bind of a sub-tree (a container's view), not the hierarchy root
            point = fields[4].replace("\\040", " ")
            if fstype == "cgroup2" and v2_mount is None:
                v2_mount = point
            elif fstype == "cgroup":
                for option in options.split(","):
                    if option in ("cpu", "cpuacct", "cpuset", "memory", "blkio", "pids",
                                  "freezer", "devices"):
                        v1.setdefault(option, point)
    found = Hierarchies(v2_mount=v2_mount, v1_mounts=v1)
    if mountinfo == "/proc/self/mountinfo":
        _detected[:] = [found]
    return found


@attrs.frozen
class CgroupInfo:
    """The cgroup(s) an instance runs in (``Instance.cgroup``).

    Attributes:
        name: the instance's cgroup, relative to each hierarchy's root
            (``/instancelib/i.0.4242.1f3a9c``: the user, the process that made
            it, a random part; the instance's name is in the registry's record).
        v2: its directory in the cgroup v2 hierarchy, if it has one
            (``cgroup.freeze``, ``cgroup.kill``, and the controllers served by v2).
        v1: its directories in cgroup v1 hierarchies, by v1 controller.
        controllers: which version serves each resource controller
            (``{"memory": "v1", "cpu": "v1", ...}``).
    """

    name: str
    v2: str | None = None
    v1: dict[str, str] = attrs.field(factory=dict)
    controllers: dict[str, str] = attrs.field(factory=dict)

    @property
    def version(self) -> str:
        """``"v2"``, ``"v1"``, or ``"hybrid"`` (v1 controllers with the v2 freeze/kill)."""
        versions = set(self.controllers.values())
        if self.v1 and self.v2:
            return "hybrid"
        if self.v2 or versions == {"v2"}:
            return "v2"
        return "v1"

    def directory(self, controller: str) -> str | None:
        """The directory serving a resource controller (v2 name), or None."""
        version = self.controllers.get(controller)
        if version == "v2":
            return self.v2
        if version == "v1":
            for name in V1_NAMES[controller]:
                if name in self.v1:
                    return self.v1[name]
        return None

    def served(self, controller: str) -> tuple[str, resources.Mode] | None:
        """The directory serving a resource controller (v2 name) and its version's mode."""
        directory = self.directory(controller)
        if directory is None:
            return None
        return directory, resources.MODES[self.controllers[controller]]

    def cpu_accounting(self) -> tuple[str, resources.Mode] | None:
        """Where CPU time is counted: every cgroup v2 directory counts it (``cpu.stat``),
        whichever version serves the cpu controller; else v1's cpuacct."""
        if self.v2 is not None:
            return self.v2, resources.V2
        if "cpuacct" in self.v1:
            return self.v1["cpuacct"], resources.V1
        return None

    def __bool__(self) -> bool:
        """False for ``NO_CGROUP``, the null cgroup of an instance that has none."""
        return bool(self.v2 or self.v1)

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes to join every part of the cgroup."""
        files = [os.path.join(self.v2, "cgroup.procs")] if self.v2 else []
        files.extend(os.path.join(path, "cgroup.procs") for path in self.v1.values())
        return files

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "v2": self.v2, "v1": dict(self.v1),
                "controllers": dict(self.controllers)}

    @classmethod
    def from_dict(cls, data: Any) -> CgroupInfo | None:
        """From a registry record; None when it is not ours (every path must be in our tree)."""
        if not isinstance(data, dict):
            return None
        try:
            info = cls(name=str(data["name"]), v2=data.get("v2"),
                       v1={str(k): str(v) for k, v in dict(data.get("v1") or {}).items()},
                       controllers={str(k): str(v)
                                    for k, v in dict(data.get("controllers") or {}).items()})
        except (KeyError, TypeError, ValueError):
            return None
        paths = ([info.v2] if info.v2 else []) + list(info.v1.values())
        if not all(isinstance(p, str) and in_our_tree(p) for p in paths):
            return None
        return info


NO_CGROUP = CgroupInfo(name="")
"""The cgroup of an instance that has none: no directories, so nothing to join,
freeze, kill or remove; stats come from its processes."""


def in_our_tree(path: str) -> bool:
    parts = Path(path).parts
    return (path.startswith("/sys/fs/cgroup/") and TREE in parts[:-1]
            and ".." not in parts and os.path.normpath(path) == path)


# -- where the tree goes ------------------------------------------------------------------------


def _our_dir(mount: str) -> str:
    """Our tree's top in a hierarchy mounted at ``mount`` (inside systemd's slice, if any)."""
    if os.path.isdir("/run/systemd/system"):
        return os.path.join(mount, "machine.slice", TREE)
    return os.path.join(mount, TREE)


def _v2_base(hierarchies: Hierarchies) -> str | None:
    """Our tree's directory in the v2 hierarchy (``None``: we may not make one)."""
    mount = hierarchies.v2_mount
    if mount is None:
        return None
    if has_host_root():
        return _our_dir(mount)
    delegated = v2.delegated_root(mount)
    return os.path.join(delegated, TREE) if delegated else None


def _v1_bases(hierarchies: Hierarchies) -> dict[str, str]:
    """Our tree's directory in each v1 hierarchy, by v1 controller (v1 is root's)."""
    if not hierarchies.v1_mounts or not has_host_root():
        return {}
    tops = {mount: _our_dir(mount) for mount in set(hierarchies.v1_mounts.values())}
    return {name: tops[mount] for name, mount in hierarchies.v1_mounts.items()}


# -- making an instance's cgroup ---------------------------------------------------------------


@attrs.frozen
class CgroupPlan:
    """Where a new instance's cgroup goes, decided (and its parents made) before it starts.

    ``bases`` are the parent directories, one per hierarchy used; the
    instance's cgroup is a directory of one name in each.  The fork-server
    makes its spare PID 1 in a cgroup of these, which the start then adopts:
    moving a process between cgroups costs milliseconds (an RCU grace
    period), the spare pays it before it is needed.
    """

    leaf: str
    v2_base: str | None
    v1_bases: dict[str, str]  # v1 controller → parent directory
    controllers: dict[str, str]
    limits: Limits
    v2_top: str | None = None  # where enabling v2 controllers stops (default: the mount)

    def bases(self) -> list[str]:
        return ([self.v2_base] if self.v2_base else []) + sorted(self.v1_bases.values())

    def roots(self) -> list[str]:
        """The mount points of the hierarchies holding the bases.

        PID 1 opens them before it leaves the host's mount tree, so it can
        still join a cgroup named later (its own ``/sys`` has no cgroup mounts).
        """
        hierarchies = detect()
        mounts = [hierarchies.v2_mount, *hierarchies.v1_mounts.values()]
        found: list[str] = []
        for base in self.bases():
            for mount in mounts:
                if mount and base.startswith(mount + "/") and mount not in found:
                    found.append(mount)
        return found

    def info(self, leaf: str) -> CgroupInfo:
        """The cgroup these bases make with directories named ``leaf``."""
        v2 = os.path.join(self.v2_base, leaf) if self.v2_base else None
        v1_dirs = {name: os.path.join(base, leaf) for name, base in self.v1_bases.items()}
        hierarchies = detect()
        return CgroupInfo(name=relative(v2 or next(iter(v1_dirs.values())), hierarchies),
                          v2=v2, v1=v1_dirs, controllers=dict(self.controllers))


def plan(name: str, limits: Limits | None, parent: str = "instancelib") -> CgroupPlan | None:
    """Decide where a new instance's cgroup goes and make its parent directories.

    ``parent`` is ``"instancelib"`` (our own tree) or ``"caller"`` (below the
    caller's own cgroup: ``instancelib.cgroups.caller``).  Returns None when
    this caller can have no cgroup there (an ordinary user without a cgroup v2
    subtree of their own) and no limits were asked for.

    Raises:
        Unsupported: a limit no hierarchy here can enforce (nothing is made).
    """
    limits = limits or Limits()
    hierarchies = detect()
    if parent == "caller":
        place = caller.placement(hierarchies.v2_mount, hierarchies.v1_mounts,
                                 root=has_host_root(), tree=TREE)
        v2_base, v2_top, v1_tops = place.v2_base, place.v2_top, place.v1_bases
    else:
        v2_base, v2_top, v1_tops = (_v2_base(hierarchies), hierarchies.v2_mount,
                                    _v1_bases(hierarchies))
    needed = limits.controllers()
    wanted = set(ALWAYS_CONTROLLERS) | needed
    caller_top = v2_top if parent == "caller" else None
    if caller_top is not None and v2_base is not None:
        # Nothing of the caller's moves, and nothing is made, for a start that would be
        # refused: judge by what its cgroup is offered.
        _, missing = _choose(wanted, needed, limits, caller.offered(caller_top), v1_tops)
        if missing:
            raise Unsupported(_why_unsupported(missing, limits, hierarchies, v2_base,
                                               caller_top=caller_top))
    v2_controllers: set[str] = set()
    if v2_base is not None:
        try:
            if caller_top is not None:
                caller.split(caller_top, hierarchies.v2_mount or "", wanted)
            v2_controllers = v2.enable_controllers(v2_base, wanted, v2_top or "")
        except OSError as err:
            log.debug("no cgroup v2 tree at %s: %s", v2_base, err.strerror)
            v2_base = None
    choice, missing = _choose(wanted, needed, limits, v2_controllers, v1_tops)
    if missing:
        _remove_caller_bases(parent, [v2_base] if v2_base else [])
        raise Unsupported(_why_unsupported(missing, limits, hierarchies, v2_base,
                                           caller_top=caller_top))
    if v2_base is None and not choice:
        return None
    v1_bases: dict[str, str] = {}
    for controller, version in choice.items():
        if version == "v1":
            v1_bases.update((n, v1_tops[n]) for n in V1_NAMES[controller] if n in v1_tops)
    if v2_base is None and "freezer" in v1_tops:
        v1_bases["freezer"] = v1_tops["freezer"]
    leaf = cgroupdirs.leaf_name(os.geteuid(), os.getpid())
    cgroup_plan = CgroupPlan(leaf=leaf, v2_base=v2_base, v1_bases=v1_bases,
                             controllers=choice, limits=limits, v2_top=v2_top)
    try:
        _prepare_bases(cgroup_plan, with_v2=False)  # v2: done above
        # Every limit's file exists in the bases as in a child: refuse now what
        # this kernel cannot enforce, before anything starts.
        resources.resolve(v2_base, v1_bases, choice, limits)
    except BaseException:
        _remove_caller_bases(parent, cgroup_plan.bases())
        raise
    _sweep_spares(cgroup_plan.bases())
    return cgroup_plan


def _choose(wanted: set[str], needed: set[str], limits: Limits, v2_controllers: set[str],
            v1_tops: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Which version serves each wanted controller, and the needed ones none serves."""
    choice: dict[str, str] = {}
    for controller in sorted(wanted):
        if controller in v2_controllers:
            choice[controller] = "v2"
        elif controller in V1_NAMES and V1_NAMES[controller][0] in v1_tops:
            choice[controller] = "v1"
    unified_only = {key.partition(".")[0] for key in limits.unified}
    missing = sorted(c for c in needed if c not in choice or
                     (c in unified_only and choice[c] != "v2"))
    return choice, missing


def _remove_caller_bases(parent: str, bases: list[str]) -> None:
    """Undo a refused start's ``instancelib/`` in the caller's cgroups (if empty)."""
    if parent != "caller":
        return  # our own tree's tops may stay
    for base in bases:
        with contextlib.suppress(OSError):
            os.rmdir(base)


def _prepare_bases(cgroup_plan: CgroupPlan, *, with_v2: bool = True) -> None:
    hierarchies = detect()
    if with_v2 and cgroup_plan.v2_base is not None:
        v2.enable_controllers(cgroup_plan.v2_base, set(cgroup_plan.controllers),
                              cgroup_plan.v2_top or hierarchies.v2_mount or "")
    for v1_name, base in cgroup_plan.v1_bases.items():
        v1.prepare_base(v1_name, base)
        if v1_name == "blkio":
            v1.enable_io_accounting(base)


def adopt(cgroup_plan: CgroupPlan, spare_leaf: str | None) -> tuple[CgroupInfo, list[str]]:
    """Give the new instance its cgroup, and apply the limits.

    With ``spare_leaf`` the spare PID 1 was born in directories of that name
    under the plan's bases: they become the instance's cgroup (cgroup v2
    cannot rename a cgroup, so the name stays).  Otherwise, or for a part
    that is missing, directories named ``plan.leaf`` are made, and the
    returned ``cgroup.procs`` files are the ones PID 1 must still join.  To
    undo: ``remove`` the returned info once PID 1 is gone.

    Raises:
        InvalidArgument: the kernel refused a limit's value.
        Unsupported: the kernel lacks a limit's file.
    """
    spare = cgroup_plan.info(spare_leaf) if spare_leaf else None
    final = spare or cgroup_plan.info(cgroup_plan.leaf)
    to_join: list[str] = []
    for directory in ([final.v2] if final.v2 else []) + list(final.v1.values()):
        if spare is not None and os.path.isdir(directory):
            continue
        try:
            os.mkdir(directory)
        except FileNotFoundError:  # the empty top was removed meanwhile: make it again
            _prepare_bases(cgroup_plan)
            os.mkdir(directory)
        to_join.append(os.path.join(directory, "cgroup.procs"))
    resources.apply(final.v2, final.v1, final.controllers, cgroup_plan.limits)
    return final, to_join


_swept: list[float] = []
_SWEEP_EVERY = 60.0


def _sweep_spares(bases: list[str]) -> None:
    """Remove spare cgroups left by fork-servers that died without cleaning up.

    Cgroups are named ``i.UID.PID.RANDOM`` (PID: the fork-server that made
    them for a spare, or the caller); one is removed when empty and that
    process is gone.  At most once a minute.
    """
    now = time.monotonic()
    if _swept and now - _swept[0] < _SWEEP_EVERY:
        return
    _swept[:] = [now]
    uid = os.geteuid()
    for base in bases:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for entry in names:
            owner = cgroupdirs.leaf_owner(entry)
            if owner is None or owner[0] != uid or os.path.exists(f"/proc/{owner[1]}"):
                continue
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(base, entry))  # fails (EBUSY) unless empty


def relative(directory: str, hierarchies: Hierarchies) -> str:
    for mount in [hierarchies.v2_mount, *hierarchies.v1_mounts.values()]:
        if mount and directory.startswith(mount + "/"):
            return directory[len(mount):]
    return directory


def _why_unsupported(missing: list[str], limits: Limits, hierarchies: Hierarchies,
                     v2_base: str | None, *, caller_top: str | None = None) -> str:
    v2_offers = "none"
    if v2_base is not None:
        with contextlib.suppress(OSError):
            v2_offers = v2.read(os.path.join(os.path.dirname(v2_base),
                                           "cgroup.controllers")).strip() or "none"
    if caller_top is not None:
        where = _why_not_caller(caller_top, v2_base is not None, hierarchies)
    elif not has_host_root() and v2_base is None:
        where = ("this user has no cgroup v2 subtree of their own (systemd's user manager "
                 "delegates one); cgroup v1 is root's")
    elif not has_host_root():
        where = (f"this user's delegated cgroup v2 subtree ({os.path.dirname(v2_base or '')}) "
                 f"offers only: {v2_offers}; cgroup v1 is root's")
    else:
        offered = sorted(hierarchies.v1_mounts)
        where = (f"no cgroup hierarchy here offers them (cgroup v2 at "
                 f"{hierarchies.v2_mount or 'none'} offers: {v2_offers}; cgroup v1 "
                 f"hierarchies: {', '.join(offered) or 'none'})")
    names = ", ".join(missing)
    return f"cannot enforce the {names} limits: {where}; {limits.to_dict()}"


def _why_not_caller(top: str, writable: bool, hierarchies: Hierarchies) -> str:
    """Why the caller's cgroup cannot serve a limit (``cgroup_parent="caller"``)."""
    if not writable:
        where = (f"cgroup_parent='caller': the caller's cgroup {top} is not this user's to "
                 "write (a systemd unit hands its cgroup over with Delegate=yes)")
    else:
        offered = " ".join(sorted(caller.offered(top))) or "none"
        where = (f"cgroup_parent='caller': the caller's cgroup {top} is offered only: "
                 f"{offered} (a systemd unit gets controllers with Delegate=yes)")
    if has_host_root() and hierarchies.v1_mounts:
        where += f"; cgroup v1 hierarchies: {', '.join(sorted(hierarchies.v1_mounts))}"
    elif hierarchies.v1_mounts:
        where += "; cgroup v1 is root's"
    return where
