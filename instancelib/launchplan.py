"""Turn ``StartOptions`` into the plan the instance's PID 1 carries out.

All decisions are made here, in the caller, where errors can be raised as
typed exceptions before anything is started: which paths are bound where,
read-only or not, which directories are private, the environment to start
from, the command.  The plan crosses to the fork-server as JSON
(``LaunchPlan.to_wire``); PID 1 then executes it step by step without
deciding anything (see ``instancelib.linux.container``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Mapping
from typing import Any

import attrs

from instancelib import environment
from instancelib.errors import PermissionDenied, StartError
from instancelib.image import Image, cache
from instancelib.linux.userns import has_host_root, user_namespace_plan
from instancelib.network.plan import NetworkPlan, hosts_file, plan_network, resolv_conf
from instancelib.options import StartOptions

__all__ = [
    "SESSION_SIZE",
    "LaunchPlan",
    "MountOp",
    "build_launch_plan",
    "session_dir",
]

# Size of the per-instance staging tmpfs: it holds the writable-tmpfs upper
# layer, as Apptainer's "sessiondir max size = 64" (MiB) does.
SESSION_SIZE = "64m"
# Private directories of a contained instance (``contain=True``).
CONTAINED_TMPFS = "mode=1777,size=64m"

# Host files bound into every instance when they exist (read-only).
SYSTEM_FILE_BINDS = ("/etc/hosts", "/etc/localtime", "/etc/resolv.conf")


@attrs.frozen(kw_only=True)
class MountOp:
    """One mount PID 1 performs, in plan order.

    ``op`` is one of ``proc``, ``sysfs``, ``bind``, ``tmpfs``, ``minimal_dev``,
    ``file`` (``options`` is a file's content, bound read-only onto ``target``) or
    ``account`` (``options`` is a passwd/group line, merged into a copy of the
    image's file at ``target``).
    """

    op: str
    target: str
    source: str | None = None
    recursive: bool = True
    readonly: bool = False
    optional: bool = False
    options: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class LaunchPlan:
    """Everything PID 1 needs to build and start the instance."""

    name: str
    user: str
    hostname: str | None
    session_dir: str
    rootfs: dict[str, Any]
    writable_tmpfs: bool
    mounts: tuple[MountOp, ...]
    env_base: dict[str, str]
    env_overrides: dict[str, str]
    env_runtime: dict[str, str]
    cwd: tuple[str, ...]
    command_kind: str
    args: tuple[str, ...]
    timeout: float
    end_with_caller: bool = False
    userns: dict[str, Any] | None = None
    note: str | None = None
    network: NetworkPlan = attrs.field(factory=lambda: NetworkPlan(namespace=False))
    restart: str = "no"
    health: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "user": self.user,
            "hostname": self.hostname,
            "session_dir": self.session_dir,
            "session_size": SESSION_SIZE,
            "rootfs": self.rootfs,
            "writable_tmpfs": self.writable_tmpfs,
            "mounts": [op.to_wire() for op in self.mounts],
            "env": {"base": self.env_base, "overrides": self.env_overrides,
                    "runtime": self.env_runtime},
            "cwd": list(self.cwd),
            "command": {"kind": self.command_kind, "args": list(self.args)},
            "timeout": self.timeout,
            "end_with_caller": self.end_with_caller,
            "userns": self.userns,
            "note": self.note,
            "network": self.network.to_wire(),
            "restart": self.restart,
            "health": self.health,
        }


def session_dir() -> str:
    """The empty directory PID 1 mounts its staging tmpfs on (inside its own namespace).

    It is never mounted on in the host's view; it only needs to exist, and
    to belong to the caller.  Root's is under /run; an ordinary user's under
    ``$XDG_RUNTIME_DIR``, else ``/tmp/instancelib-UID``, else (when another
    user has taken that name in /tmp) under their image cache.
    """
    if has_host_root():
        return "/run/instancelib/session"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.geteuid():
        return os.path.join(runtime, "instancelib", "session")
    shared = f"/tmp/instancelib-{os.geteuid()}"
    try:
        info = os.lstat(shared)
    except FileNotFoundError:
        return os.path.join(shared, "session")
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
        return os.path.join(shared, "session")
    # Squatted (anybody may create names in /tmp): use a place only we can write.
    return str(cache.cache_root() / "session")


def ensure_session_dir(path: str) -> None:
    """Create the session directory (0700) and refuse one that is not the caller's own.

    Under /tmp anybody could have created the path first, as a symlink or as
    a directory of theirs: every component we create is checked.
    """
    parent = os.path.dirname(path)
    if not os.path.isdir(os.path.dirname(parent)):
        try:
            os.makedirs(os.path.dirname(parent), mode=0o700, exist_ok=True)
        except OSError as err:
            raise StartError("cannot create the session directory", path=parent,
                             errno=err.errno) from err
    for directory in (parent, path):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise StartError("cannot create the session directory", path=directory,
                             errno=err.errno) from err
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise StartError("the session directory is not a plain directory (a symlink?)",
                             path=directory)
        if info.st_uid != os.geteuid():
            raise PermissionDenied(f"the session directory belongs to UID {info.st_uid}, "
                                   "not to you", path=directory)


def _default_mounts(*, contain: bool, home: str, files: dict[str, str]) -> list[MountOp]:
    mounts = [MountOp(op="proc", target="/proc"), MountOp(op="sysfs", target="/sys")]
    if contain:
        mounts.append(MountOp(op="minimal_dev", target="/dev"))
        for private in dict.fromkeys((home, "/tmp", "/var/tmp")):
            mounts.append(MountOp(op="tmpfs", target=private, options=CONTAINED_TMPFS))
    else:
        mounts.append(MountOp(op="bind", source="/dev", target="/dev"))
        for shared in dict.fromkeys((home, "/tmp", "/var/tmp")):
            mounts.append(MountOp(op="bind", source=shared, target=shared, optional=True))
    for path in SYSTEM_FILE_BINDS:
        if path in files:  # the instance's own (its DNS servers, its network's names)
            mounts.append(MountOp(op="file", target=path, options=files[path]))
        else:
            mounts.append(MountOp(op="bind", source=path, target=path, recursive=False,
                                  readonly=True, optional=True))
    return mounts


def _account_entries(entry: pwd.struct_passwd) -> list[MountOp]:
    """The caller's passwd and group entries, merged into copies of the image's files by
    PID 1 (``linux.accounts``), as Singularity does for a user who is not root inside."""
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = entry.pw_name
    return [MountOp(op="account", target="/etc/passwd",
                    options=f"{entry.pw_name}:x:{entry.pw_uid}:{entry.pw_gid}:"
                            f"{entry.pw_gecos}:{entry.pw_dir}:{entry.pw_shell}"),
            MountOp(op="account", target="/etc/group",
                    options=f"{group}:x:{entry.pw_gid}:{entry.pw_name}")]


def build_launch_plan(
    image: Image,
    name: str,
    options: StartOptions,
    *,
    host_env: Mapping[str, str] | None = None,
) -> LaunchPlan:
    """Resolve checked start options into a ``LaunchPlan`` for this caller and host.

    Raises:
        InvalidArgument: the arguments and environment exceed what ``execve`` takes.
        StartError: a user bind whose source does not exist.
    """
    host = dict(os.environ if host_env is None else host_env)
    entry = pwd.getpwuid(os.getuid())
    home = host.get("HOME") or entry.pw_dir
    overrides = environment.prefixed_overrides(host)
    overrides.update(options.env)
    network = plan_network(options.network, options.network_args)
    files = {}
    if options.dns:
        files["/etc/resolv.conf"] = resolv_conf(options.dns)
    if network.namespace:
        files["/etc/hosts"] = hosts_file(options.hostname or name)
    mounts = _default_mounts(contain=options.contain, home=home, files=files)
    if os.getuid() != 0 and not options.fakeroot:
        mounts += _account_entries(entry)
    for bind in options.binds:
        if not os.path.exists(bind.source):
            raise StartError(f"bind source {bind.source} does not exist", path=bind.source,
                             step=f"bind {bind}")
        mounts.append(MountOp(op="bind", source=bind.source, target=bind.destination,
                              readonly=bind.read_only))
    try:
        cwd = os.getcwd() if not options.contain else home
    except FileNotFoundError:  # the caller's directory was removed
        cwd = home
    user_namespace, note = user_namespace_plan(fakeroot=options.fakeroot)
    base = environment.base_environment(host, cleanenv=options.cleanenv, home=home)
    environment.check_exec_size(list(options.args), {**base, **overrides},
                                "the start script")
    return LaunchPlan(
        name=name,
        user=entry.pw_name,
        hostname=options.hostname,
        session_dir=session_dir(),
        rootfs=image.rootfs_plan(),
        writable_tmpfs=options.writable_tmpfs,
        mounts=tuple(mounts),
        env_base=base,
        env_overrides=overrides,
        env_runtime=environment.runtime_variables(name, image.path),
        cwd=tuple(dict.fromkeys((cwd, home, "/"))),
        command_kind="idle" if not options.service else "run" if options.run else "start",
        end_with_caller=options.end_with_caller,
        args=options.args,
        timeout=options.timeout,
        userns=user_namespace,
        note=note,
        network=network,
        restart=options.restart,
        health=options.health.to_plan() if options.health is not None else None,
    )
