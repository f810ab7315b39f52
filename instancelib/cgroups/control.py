"""A running instance's cgroup: found from its live PID 1, frozen, killed, removed.

``live_info`` is the only way to an instance's cgroup: what the kernel says
of the live PID 1 (``/proc/PID/cgroup``), never what a record says.  The
rest acts on what it returned (or, for an instance found dead, only removes
empty directories of its owner's, never kills).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

from instancelib.cgroups import v1, v2
from instancelib.cgroups.tree import (
    NO_CGROUP,
    TREE,
    V1_NAMES,
    CgroupInfo,
    detect,
    in_our_tree,
    relative,
)
from instancelib.errors import Unsupported
from instancelib.linux import cgroupdirs

__all__ = ["freeze", "is_frozen", "kill", "live_info", "populated", "remove", "remove_dead"]

log = logging.getLogger("instancelib")

_REMOVE_WAIT = 2.0


def live_info(pid: int, uid: int, recorded: CgroupInfo | None = None) -> CgroupInfo:
    """The cgroup of process ``pid`` (an instance's PID 1, of owner ``uid``), from the kernel.

    Only what the live process's ``/proc/PID/cgroup`` says counts, never a
    record: a leaf ``i.UID.N.HEX`` of that owner directly under our tree in a
    hierarchy, whose directory belongs to that owner.  ``recorded`` (the
    record's view) only labels which version serves each controller.
    ``NO_CGROUP`` when the process is in no cgroup of ours.
    """
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return NO_CGROUP
    hierarchies = detect()
    v2_dir: str | None = None
    v1_dirs: dict[str, str] = {}
    name = ""
    leaves: dict[str, bool] = {}  # an instance's lines mostly name one path: check it once
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        ours = leaves.get(path)
        if ours is None:
            ours = leaves[path] = _is_instance_leaf(path, uid)
        if not ours:
            continue
        if hierarchy == "0" and not controllers:
            if hierarchies.v2_mount and _owned_by(hierarchies.v2_mount + path, uid):
                v2_dir, name = hierarchies.v2_mount + path, name or path
            continue
        for controller in controllers.split(","):
            mount = hierarchies.v1_mounts.get(controller)
            if mount and _owned_by(mount + path, uid):
                v1_dirs[controller] = mount + path
                name = name or path
    if v2_dir is None and not v1_dirs:
        return NO_CGROUP
    labels = dict(recorded.controllers) if recorded is not None else {}
    served = {c: version for c, version in labels.items()
              if (version == "v2" and v2_dir is not None)
              or (version == "v1" and any(n in v1_dirs for n in V1_NAMES.get(c, ())))}
    for controller, names in V1_NAMES.items():
        if controller not in served and any(n in v1_dirs for n in names):
            served[controller] = "v1"
    return CgroupInfo(name=name, v2=v2_dir, v1=v1_dirs, controllers=served)


def _is_instance_leaf(path: str, uid: int) -> bool:
    """``.../instancelib/i.UID.N.HEX``: an instance's (or a spare's) cgroup of that owner."""
    parent, _, leaf = path.rpartition("/")
    owner = cgroupdirs.leaf_owner(leaf)
    return (os.path.basename(parent) == TREE and owner is not None and owner[0] == uid
            and ".." not in path.split("/") and path.startswith("/"))


def _owned_by(directory: str, uid: int) -> bool:
    try:
        return os.lstat(directory).st_uid == uid
    except OSError:
        return False


def remove_dead(recorded: Any, uid: int) -> None:
    """Remove the cgroup a record names for an instance found dead (never kill anything).

    Only directories in our tree, named as that owner's instance cgroups and
    belonging to that owner; ``rmdir`` removes nothing that still has processes.
    """
    info = CgroupInfo.from_dict(recorded)
    if info is None:
        return
    directories = [d for d in [info.v2, *info.v1.values()] if d]
    mounts = detect()
    for directory in directories:
        inside = relative(directory, mounts)
        if inside == directory or not _is_instance_leaf(inside, uid) \
                or not _owned_by(directory, uid):
            return
    remove(info, wait=0.5)


def freeze(info: CgroupInfo, frozen: bool, *, timeout: float = 5.0) -> None:
    """Freeze (or thaw) every process of the cgroup; returns once it is done.

    Nothing is written when it is already in that state (see ``v2.freeze``).

    Raises:
        Unsupported: no freezer (``NO_CGROUP``, or v1 without its freezer).
    """
    if not info:
        raise Unsupported("pausing needs the instance to have a cgroup (root's instances "
                          "have one; an ordinary user's need a delegated cgroup v2 subtree)")
    if info.v2 is not None:
        v2.freeze(info.v2, frozen, timeout=timeout)
        return
    directory = info.v1.get("freezer")
    if directory is None:
        raise Unsupported("pausing needs a freezer: cgroup v2, or the v1 freezer hierarchy")
    v1.freeze(directory, frozen, timeout=timeout)


def is_frozen(info: CgroupInfo) -> bool:
    """Whether the cgroup is frozen or being frozen (False once it is gone)."""
    try:
        if info.v2 is not None:
            return v2.read(os.path.join(info.v2, "cgroup.freeze")).strip() == "1"
        freezer = info.v1.get("freezer")
        return freezer is not None and \
            v2.read(os.path.join(freezer, "freezer.state")).strip() != "THAWED"
    except FileNotFoundError:
        return False


def kill(info: CgroupInfo) -> None:
    """SIGKILL every process in the cgroup (v2 ``cgroup.kill``; v1: freeze, kill, thaw)."""
    if info.v2 is not None and v2.kill(info.v2):
        return
    directory = info.v1.get("freezer") or next(iter(info.v1.values()), None)
    if directory is None:
        return
    frozen = "freezer" in info.v1
    with contextlib.suppress(OSError, TimeoutError):
        if frozen:
            v1.freeze(info.v1["freezer"], True, timeout=1.0)
    try:
        for pid in _procs(directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        if frozen:
            with contextlib.suppress(OSError, TimeoutError):
                v1.freeze(info.v1["freezer"], False, timeout=1.0)


def _procs(directory: str) -> list[int]:
    try:
        return [int(line) for line in v2.read(os.path.join(directory, "cgroup.procs")).split()]
    except OSError:
        return []


def populated(info: CgroupInfo) -> bool:
    """Whether any process is still in the cgroup."""
    if info.v2 is not None:
        return v2.populated(info.v2)
    return any(_procs(d) for d in info.v1.values())


def remove(info: CgroupInfo, *, wait: float = _REMOVE_WAIT) -> bool:
    """Remove the cgroup's directories (once its processes are gone); True if all went."""
    directories = list(info.v1.values()) + ([info.v2] if info.v2 else [])
    refused: list[tuple[str, OSError]] = []
    remaining = cgroupdirs.remove_empty([d for d in directories if d and in_our_tree(d)],
                                        wait=wait, refused=refused)
    for directory, err in refused:
        log.warning("cannot remove cgroup %s: %s", directory, err.strerror)
    remaining = [d for d in remaining if d not in {r for r, _ in refused}]
    if remaining:
        log.warning("cgroups still busy, left in place: %s", ", ".join(remaining))
        return False
    for parent in {os.path.dirname(d) for d in directories if d}:
        if os.path.basename(parent) == TREE:
            with contextlib.suppress(OSError):
                os.rmdir(parent)  # our tree's top, once nothing is left in it
    return True
