"""``cgroup_parent="caller"``: an instance's cgroup as a child of its caller's own.

A systemd unit, a batch job, or any caller in a cgroup it owns may want the
instance inside that cgroup: the unit's accounting and limits then cover the
service, and stopping the unit (systemd kills its whole cgroup) ends it.  The
instance's cgroup is then ``<caller's cgroup>/instancelib/i.UID.PID.HEX`` in
each hierarchy used, the caller's cgroup being what the kernel says of this
process (``/proc/self/cgroup``).

cgroup v2 passes controllers down only from a cgroup that holds no processes
of its own (the root excepted).  When the caller's cgroup offers controllers
(systemd hands them to a unit with ``Delegate=yes``) that it does not pass
down yet, the processes in it move first into its child ``supervisor``, as
systemd's ``DelegateSubgroup=supervisor`` places them and podman's
``--cgroups=split`` does; a caller whose cgroup is named ``supervisor``
therefore counts as its parent's.  Without such controllers nothing moves:
the instance's cgroup then has v2's core files only (freeze, kill, CPU time).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterable

from instancelib.cgroups import v2
from instancelib.errors import Unsupported
from instancelib.verbosity import VERBOSE

__all__ = ["SUPERVISOR", "Placement", "offered", "own_cgroups", "placement", "split"]

log = logging.getLogger("instancelib")

SUPERVISOR = "supervisor"
_MOVE_PASSES = 5  # processes the caller's cgroup gains while its processes are moved


class Placement:
    """Where a caller's instances go: the parent directories, and the caller's own.

    Attributes:
        v2_base: ``<caller's v2 cgroup>/instancelib`` (None: not ours to write).
        v2_top: the caller's v2 cgroup, where enabling controllers stops (set
            also when it is not ours to write, for the error that says so).
        v1_bases: ``<caller's cgroup>/instancelib`` in each v1 hierarchy, by controller.
    """

    def __init__(self, v2_base: str | None, v2_top: str | None,
                 v1_bases: dict[str, str]) -> None:
        self.v2_base, self.v2_top, self.v1_bases = v2_base, v2_top, v1_bases


def own_cgroups(text: str) -> dict[str, str]:
    """The caller's cgroup per hierarchy, from ``/proc/self/cgroup``'s ``text``.

    Keys: ``""`` for cgroup v2, else each v1 controller of the line.  A cgroup
    named ``supervisor`` stands for its parent (see the module's doc).

    Raises:
        Unsupported: a path outside this cgroup namespace's view (``/..``).
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not hierarchy.isdigit() or not path.startswith("/"):
            continue
        if ".." in path.split("/") or os.path.normpath(path) != path:
            raise Unsupported(f"cgroup_parent='caller': this process's cgroup {path} lies "
                              "outside the cgroup namespace it sees, so no child of it can "
                              "be made")
        if os.path.basename(path) == SUPERVISOR:
            path = os.path.dirname(path)
        if hierarchy == "0" and not controllers:
            found[""] = path
        else:
            for controller in controllers.split(","):
                found[controller] = path
    return found


def placement(v2_mount: str | None, v1_mounts: dict[str, str], *, root: bool,
              tree: str, proc_cgroup: str = "/proc/self/cgroup") -> Placement:
    """The parents for a caller's instances (v1 only for root, v2 where writable).

    Raises:
        Unsupported: the caller's cgroup cannot be seen whole (``own_cgroups``).
    """
    with open(proc_cgroup) as f:
        own = own_cgroups(f.read())
    v2_base = v2_top = None
    if v2_mount is not None and "" in own:
        v2_top = os.path.normpath(v2_mount + own[""])
        if root or _writable(v2_top):
            v2_base = os.path.join(v2_top, tree)
        else:
            log.debug("cgroup_parent='caller': %s is not this user's to write", v2_top)
    v1_bases: dict[str, str] = {}
    if root:
        for controller, mount in v1_mounts.items():
            if controller in own:
                v1_bases[controller] = os.path.join(os.path.normpath(mount + own[controller]),
                                                    tree)
    return Placement(v2_base, v2_top, v1_bases)


def _writable(directory: str) -> bool:
    """Whether this user may make children here and move processes within it."""
    try:
        info = os.stat(directory)
    except OSError:
        return False
    return (info.st_uid == os.geteuid() and os.access(directory, os.W_OK)
            and os.access(os.path.join(directory, "cgroup.procs"), os.W_OK))


def offered(top: str) -> set[str]:
    """The controllers the caller's cgroup is offered (what its children can get)."""
    try:
        return set(v2.read(os.path.join(top, "cgroup.controllers")).split())
    except OSError:
        return set()


def split(top: str, mount: str, wanted: Iterable[str]) -> None:
    """Move the processes of the caller's cgroup ``top`` into ``top/supervisor`` when
    that lets ``top`` pass down controllers it offers but does not pass yet."""
    if top == mount:
        return  # the root cgroup may pass controllers down with processes in it
    try:
        passed = set(v2.read(os.path.join(top, "cgroup.subtree_control")).split())
    except OSError:
        return
    if not (set(wanted) & offered(top)) - passed:
        return
    supervisor = os.path.join(top, SUPERVISOR)
    moved = 0
    for _ in range(_MOVE_PASSES):
        pids = _procs(top)
        if not pids:
            break
        with contextlib.suppress(FileExistsError):
            os.mkdir(supervisor)
        for pid in pids:
            try:
                v2.write(os.path.join(supervisor, "cgroup.procs"), pid)
                moved += 1
            except OSError as err:
                if err.errno != errno.ESRCH:  # gone meanwhile: nothing to move
                    log.debug("cannot move %s into %s: %s", pid, supervisor, err.strerror)
                    return
    if moved:
        log.log(VERBOSE, "moved %d process(es) of %s into %s, so that its cgroup can pass "
                "controllers to the instance's", moved, top, supervisor)


def _procs(directory: str) -> list[str]:
    try:
        return v2.read(os.path.join(directory, "cgroup.procs")).split()
    except OSError:
        return []
