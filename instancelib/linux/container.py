"""Assemble an instance's root filesystem and pivot into it.

Run by the instance's PID 1, inside its new mount namespace, on a plan the
caller already validated (see ``instancelib.launchplan``): this module makes
no policy decisions, it carries out mount operations in order and names the
step, the user's path and the errno when one fails.

The sequence (``setup_container``):

1. make every mount a slave, so nothing we mount propagates to the host;
2. mount a small tmpfs on the session directory (staging area);
3. bind the image there (a directory) or mount its squashfs through a loop
   device (a SIF or squashfs file, as root), and build the root: a read-only
   bind, or an overlay with a tmpfs upper layer (``writable_tmpfs``), or a
   read-only overlay with a "skeleton" layer that supplies missing mount points;
4. carry out the plan's mounts (/proc, /sys, /dev, binds, tmpfs) onto targets
   resolved inside the new root (see ``pathwalk``);
5. set the hostname, pivot_root into the new root, detach the old one.

Only the standard library is imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import time
from collections.abc import Callable
from typing import Any

from instancelib.linux import accounts, advice, loopdev, pathwalk, syscalls
from instancelib.linux.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SLAVE,
    MS_UNBINDABLE,
)

__all__ = ["SetupError", "setup_container"]

_ST_RELATIME = 4096

# Device nodes of a minimal /dev (``contain=True``), bind-mounted from the host.
_MINIMAL_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# (directory, filesystem, flags, options): a devpts instance of its own, and /dev/shm.
_MINIMAL_SUBMOUNTS = (
    ("pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
    ("shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
)
_MINIMAL_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
}


class SetupError(Exception):
    """A set-up step failed; ``step`` names it, ``path`` is the user's path."""

    def __init__(self, step: str, message: str, *, errno: int | None = None,
                 path: str | None = None) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.errno = errno
        self.path = path

    def to_wire(self) -> dict[str, Any]:
        return {"step": self.step, "message": self.message, "errno": self.errno,
                "path": self.path}


def _step(name: str, path: str | None = None) -> Callable[[OSError], SetupError]:
    def wrap(err: OSError) -> SetupError:
        return SetupError(name, err.strerror or str(err), errno=err.errno, path=path)
    return wrap


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def setup_container(plan: dict[str, Any]) -> dict[str, Any]:
    """Build the root filesystem described by ``plan`` and pivot into it.

    Returns what the caller should know: ``notes`` for its log (fallbacks that
    were taken, how the image was mounted) and the ``loop`` device used, if any.
    """
    report: dict[str, Any] = {"notes": [], "loop": None, "helpers": []}
    notes: list[str] = report["notes"]
    session = plan["session_dir"]
    make_mounts_slave()
    mount_session(session, plan["session_size"])
    plan = {**plan, "mounts": _write_files(plan["mounts"], os.path.join(session, "layers"))}
    root = os.path.join(session, "root")
    root_fd = mount_root(plan, session, root, report)
    try:
        plan = {**plan, "mounts": _merge_accounts(plan["mounts"], root, root_fd,
                                                  os.path.join(session, "layers"))}
        writable = plan["writable_tmpfs"] or bool(plan["rootfs"].get("writable"))
        for op in plan["mounts"]:
            apply_mount(root_fd, root, op, writable=writable, notes=notes)
        if plan.get("hostname"):
            set_hostname(plan["hostname"])
        pivot_to_root(root_fd)
    finally:
        os.close(root_fd)
    return report


def _write_files(mounts: list[dict[str, Any]], layers: str) -> list[dict[str, Any]]:
    """Turn each ``file`` operation into a read-only bind of a file written here.

    The files (a ``resolv.conf`` of the instance's DNS servers, its
    ``/etc/hosts``) live on the session's layers tmpfs, in this mount
    namespace only.
    """
    result = []
    for index, op in enumerate(mounts):
        if op["op"] != "file":
            result.append(op)
            continue
        result.append(_file_bind(op, layers, f"{index}", str(op.get("options") or "")))
    return result


def _file_bind(op: dict[str, Any], layers: str, prefix: str, content: str) -> dict[str, Any]:
    """Write ``content`` on the session's layers tmpfs; return a read-only bind of it
    onto ``op``'s target."""
    directory = os.path.join(layers, "files")
    path = os.path.join(directory, f"{prefix}-{os.path.basename(op['target'])}")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(descriptor, content.encode())
        finally:
            os.close(descriptor)
    except OSError as err:
        raise _step(f"write {op['target']}", op["target"])(err) from err
    return {**op, "op": "bind", "source": path, "recursive": False, "readonly": True,
            "optional": False, "options": None}


def _merge_accounts(mounts: list[dict[str, Any]], root: str, root_fd: int,
                    layers: str) -> list[dict[str, Any]]:
    """Turn each ``account`` operation (the caller's passwd or group entry) into a
    read-only bind of the image's file with the entry merged in (``accounts``)."""
    result = []
    for index, op in enumerate(mounts):
        if op["op"] != "account":
            result.append(op)
            continue
        content = accounts.merge_entry(accounts.read_in_root(root, root_fd, op["target"]),
                                       str(op.get("options") or ""))
        result.append(_file_bind(op, layers, f"account-{index}", content))
    return result


def make_mounts_slave() -> None:
    """Stop mount events from propagating back to the host (they still flow in)."""
    try:
        syscalls.mount(None, "/", None, MS_REC | MS_SLAVE)
    except OSError as err:
        raise _step("make / a slave mount")(err) from err


def mount_session(session: str, size: str) -> None:
    """Mount the staging area; it only exists inside this mount namespace.

    ``session`` gets a tiny tmpfs holding only mount points, made unbindable:
    a recursive bind of a directory above it (``/tmp`` for an ordinary user, a
    user's ``--bind /run``) then leaves it, and all below it, out, so the
    instance never sees its own staging area.  Overlayfs refuses layers on an
    unbindable mount, so the layers (upper, work, skeleton) live on a second,
    ordinary tmpfs of ``size`` at ``session/layers``.
    """
    try:
        syscalls.mount("tmpfs", session, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=64k")
        syscalls.mount(None, session, None, MS_UNBINDABLE)
        layers = os.path.join(session, "layers")
        os.mkdir(layers, 0o700)
        syscalls.mount("tmpfs", layers, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,size={size}")
    except OSError as err:
        raise _step("mount session tmpfs", session)(err) from err


# Descriptors PID 1 keeps for its whole life (a shared lock on a cache entry).
_held: list[int] = []
_SQUASHFUSE_WAIT = 10.0


def mount_image(rootfs: dict[str, Any], lower: str, report: dict[str, Any]) -> None:
    """Make the image's root filesystem appear at ``lower``."""
    image = rootfs["path"]
    if rootfs.get("hold"):
        # Shared for as long as we run: the cache never evicts an entry in use.
        fd = os.open(rootfs["hold"], os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _held.append(fd)
    if rootfs["kind"] == "squashfuse":
        _mount_squashfuse(rootfs, lower, report)
        return
    if rootfs["kind"] == "squashfs":
        try:
            device, fd, shared = loopdev.attach(image, rootfs["offset"], rootfs["size"])
        except OSError as err:
            raise _step("attach a loop device to the image", image)(err) from err
        try:
            syscalls.mount(device, lower, "squashfs", MS_RDONLY | MS_NODEV)
        except OSError as err:
            raise _step(f"mount the image's squashfs from {device}", image)(err) from err
        finally:
            os.close(fd)  # the mount holds the device; autoclear frees it after the mount
        report["loop"] = device
        report["notes"].append(f"the image's squashfs is mounted through {device}"
                               + (" (shared with another instance)" if shared else ""))
        return
    try:
        syscalls.mount(image, lower, None, MS_BIND | MS_REC)
    except OSError as err:
        raise _step("bind the image", image)(err) from err


def _mount_squashfuse(rootfs: dict[str, Any], lower: str, report: dict[str, Any]) -> None:
    """Mount the squashfs with squashfuse, run in the foreground as our own child.

    Its stop signals are blocked (the mask survives exec), so a stop reaches
    the service while its filesystem stays up; it ends with the namespace.
    """
    image = rootfs["path"]
    before = os.stat(lower).st_dev
    argv = [rootfs["helper"], "-f", "-o", f"ro,offset={rootfs['offset']}", image, lower]
    try:
        pid = os.posix_spawn(argv[0], argv, {"PATH": "/usr/bin:/bin"},
                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDWR, 0)],
                             setsigmask=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
                             setsid=True)
    except OSError as err:
        raise _step("run squashfuse", image)(err) from err
    deadline = time.monotonic() + _SQUASHFUSE_WAIT
    while os.stat(lower).st_dev == before:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise SetupError("mount the image with squashfuse",
                             f"squashfuse exited with status {os.waitstatus_to_exitcode(status)}",
                             path=image)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise SetupError("mount the image with squashfuse", "squashfuse did not mount it in "
                             f"{_SQUASHFUSE_WAIT:g} s", path=image)
        time.sleep(0.002)
    report["helpers"].append(pid)
    report["notes"].append("the image's squashfs is mounted with squashfuse")


def mount_root(plan: dict[str, Any], session: str, root: str, report: dict[str, Any]) -> int:
    """Mount the image at ``root`` (read-only, overlaid, or with a skeleton); return its fd."""
    image = plan["rootfs"]["path"]
    lower = os.path.join(session, "lower")
    os.mkdir(lower)
    os.mkdir(root)
    mount_image(plan["rootfs"], lower, report)
    layers = os.path.join(session, "layers")
    # Missing mount points always come from the skeleton layer, never from a
    # mkdir in the merged root: in a user namespace the image's directories
    # belong to an unmapped root, and even "root" inside may not write them.
    if plan["rootfs"].get("writable"):
        # A sandbox being built: the image itself is the root, read-write.
        try:
            syscalls.mount(lower, root, None, MS_BIND | MS_REC)
        except OSError as err:
            raise _step("bind the image", image)(err) from err
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    missing = _missing_mount_points(lower, plan["mounts"])
    lowerdirs = lower
    if missing:
        skeleton = os.path.join(layers, "skeleton")
        _build_skeleton(skeleton, lower, missing)
        lowerdirs = f"{skeleton}:{lower}"
    if plan["writable_tmpfs"]:
        upper, work = os.path.join(layers, "upper"), os.path.join(layers, "work")
        os.mkdir(upper)
        os.mkdir(work)
        _mount_overlay(root, f"lowerdir={lowerdirs},upperdir={upper},workdir={work}", image)
    elif missing:
        _mount_overlay(root, f"lowerdir={lowerdirs}", image)
    else:
        try:
            syscalls.mount(lower, root, None, MS_BIND | MS_REC)
        except OSError as err:
            raise _step("bind the image", image)(err) from err
        _make_readonly(root, recursive=True, step="make the image read-only", user_path=image)
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _mount_overlay(root: str, options: str, image: str) -> None:
    try:
        syscalls.mount("overlay", root, "overlay", 0, options)
    except OSError as err:
        failure = _step("mount overlay on the image", image)(err)
        hint = advice.advice_for("overlay in a user namespace", err)
        if hint and os.geteuid() != 0:
            failure.message += f" ({hint})"
        raise failure from err


def _target_is_dir(op: dict[str, Any]) -> bool:
    if op["op"] == "bind":
        return os.path.isdir(op["source"])
    return bool(op["op"] != "account")


def _missing_mount_points(lower: str, mounts: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """In-image paths of mount targets the image lacks, with whether each is a directory."""
    missing = []
    for op in mounts:
        if op["op"] == "bind" and not os.path.exists(op["source"]):
            continue  # reported (or skipped, if optional) when the bind is applied
        try:
            canonical, exists = pathwalk.resolve_in_root(lower, op["target"])
        except OSError as err:
            raise _step("resolve mount point", op["target"])(err) from err
        if not exists:
            missing.append((canonical, _target_is_dir(op)))
    return missing


def _build_skeleton(skeleton: str, lower: str, missing: list[tuple[str, bool]]) -> None:
    """A layer holding only the missing mount points, stacked above the image.

    Overlayfs takes a directory's owner and mode from the topmost layer that
    has it, so every directory created here copies them from the image.
    """
    os.mkdir(skeleton)
    fd = os.open(skeleton, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for canonical, is_dir in missing:
            pathwalk.create_in_root(fd, canonical, directory=is_dir)
    finally:
        os.close(fd)
    for canonical, _ in missing:
        parts = [p for p in canonical.split("/") if p]
        for depth in range(1, len(parts) + 1):
            relative = os.path.join(*parts[:depth])
            try:
                info = os.lstat(os.path.join(lower, relative))
            except OSError:
                break
            if stat.S_ISDIR(info.st_mode):
                made = os.path.join(skeleton, relative)
                os.chmod(made, stat.S_IMODE(info.st_mode))
                # In a user namespace the image's owner may have no mapping (EINVAL).
                with contextlib.suppress(OSError):
                    os.chown(made, info.st_uid, info.st_gid)
    root_info = os.stat(lower)
    os.chmod(skeleton, stat.S_IMODE(root_info.st_mode))


def _open_target(root_fd: int, root: str, op: dict[str, Any], writable: bool) -> int:
    target = op["target"]
    try:
        canonical, exists = pathwalk.resolve_in_root(root, target)
        if not exists:
            if not writable:
                raise FileNotFoundError(errno.ENOENT, "mount point does not exist in the image",
                                        target)
            pathwalk.create_in_root(root_fd, canonical, directory=_target_is_dir(op))
        return pathwalk.open_in_root(root_fd, canonical)
    except OSError as err:
        raise _step(f"prepare mount point {target}", target)(err) from err


def apply_mount(root_fd: int, root: str, op: dict[str, Any], *, writable: bool,
                notes: list[str]) -> None:
    """Carry out one mount operation of the plan onto a target inside the root."""
    kind = op["op"]
    target = op["target"]
    if kind == "bind" and not os.path.exists(op["source"]):
        if op.get("optional"):
            return
        raise SetupError(f"bind {op['source']} to {target}", "bind source does not exist",
                         errno=errno.ENOENT, path=op["source"])
    fd = _open_target(root_fd, root, op, writable)
    try:
        if kind == "proc":
            _mount_proc(fd, target, notes)
        elif kind == "sysfs":
            _mount_sysfs(fd, target, notes)
        elif kind == "tmpfs":
            _mount(f"mount tmpfs on {target}", "tmpfs", fd, "tmpfs", MS_NOSUID | MS_NODEV,
                   op.get("options"), target)
        elif kind == "bind":
            _bind(op, fd, root_fd, root)
        elif kind == "minimal_dev":
            _mount_minimal_dev(fd, root_fd, root, target)
        else:
            raise SetupError("mount", f"unknown mount operation {kind!r}")
    finally:
        os.close(fd)


def _mount(  # noqa: PLR0917 (mount(2)'s own argument list, plus context)
    step: str, source: str | None, fd: int, fstype: str | None, flags: int,
    data: str | None, path: str,
) -> None:
    try:
        syscalls.mount(source, _fd_path(fd), fstype, flags, data)
    except OSError as err:
        raise _step(step, path)(err) from err


def _reopen(root_fd: int, root: str, target: str) -> int:
    """Open ``target`` again: an fd opened before a mount still points below it."""
    canonical, _ = pathwalk.resolve_in_root(root, target)
    return pathwalk.open_in_root(root_fd, canonical)


def _bind(op: dict[str, Any], fd: int, root_fd: int, root: str) -> None:
    source, target = op["source"], op["target"]
    step = f"bind {source} to {target}"
    flags = MS_BIND | (MS_REC if op.get("recursive", True) else 0)
    try:
        src_fd = os.open(source, getattr(os, "O_PATH", 0o10000000) | os.O_CLOEXEC)
    except OSError as err:
        raise _step(step, source)(err) from err
    try:
        syscalls.mount(_fd_path(src_fd), _fd_path(fd), None, flags)
    except OSError as err:
        raise _step(step, source)(err) from err
    finally:
        os.close(src_fd)
    if op.get("readonly"):
        mounted = _reopen(root_fd, root, target)
        try:
            _make_readonly(_fd_path(mounted), recursive=bool(flags & MS_REC),
                           step=f"make {target} read-only", user_path=target)
        finally:
            os.close(mounted)


def _make_readonly(path: str, *, recursive: bool, step: str, user_path: str) -> None:
    try:
        syscalls.mount_setattr_readonly(path, recursive=recursive)
        return
    except OSError as err:
        if err.errno not in (38, 22):  # ENOSYS (Linux < 5.12), EINVAL
            raise _step(step, user_path)(err) from err
    # Fallback: remount the top mount only, keeping the flags the kernel locks.
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | _locked_flags(path)
    try:
        syscalls.mount(None, path, None, flags)
    except OSError as err:
        raise _step(step, user_path)(err) from err


def _locked_flags(path: str) -> int:
    vfs = os.statvfs(path)
    flags = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                             (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                             (os.ST_NODIRATIME, MS_NODIRATIME), (_ST_RELATIME, MS_RELATIME)):
        if vfs.f_flag & st_flag:
            flags |= ms_flag
    return flags


def _mount_proc(fd: int, target: str, notes: list[str]) -> None:
    try:
        syscalls.mount("proc", _fd_path(fd), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as err:
        # In a user namespace the kernel refuses a new procfs while the host's
        # /proc has hidden (over-mounted) parts; as Singularity, fall back to
        # the host's /proc, which shows host PIDs.
        if err.errno not in (1, 13):
            raise _step(f"mount /proc on {target}", target)(err) from err
        _mount(f"bind /proc on {target}", "/proc", fd, None, MS_BIND | MS_REC, None, target)
        notes.append("the kernel refused a new /proc in the user namespace; the host's /proc "
                     "is bound instead (it shows the host's processes)")


def _mount_sysfs(fd: int, target: str, notes: list[str]) -> None:
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY
    try:
        syscalls.mount("sysfs", _fd_path(fd), "sysfs", flags)
    except OSError as err:
        if err.errno not in (1, 13):  # EPERM/EACCES: not the owner of the network namespace
            raise _step(f"mount /sys on {target}", target)(err) from err
        _mount(f"bind /sys on {target}", "/sys", fd, None, MS_BIND | MS_REC, None, target)
        notes.append("a new sysfs needs a network namespace of the instance's own; "
                     "the host's /sys is bound instead")


def _mount_minimal_dev(fd: int, root_fd: int, root: str, target: str) -> None:
    """A tmpfs /dev with the usual device nodes, its own devpts and /dev/shm."""
    _mount(f"mount tmpfs on {target}", "tmpfs", fd, "tmpfs", MS_NOSUID | MS_NOEXEC,
           "mode=0755,size=512k", target)
    dev = _reopen(root_fd, root, target)
    try:
        for name in _MINIMAL_DEVICES:
            host = f"/dev/{name}"
            if not os.path.exists(host):
                continue
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=dev))
            node = pathwalk.open_in_root(dev, name)
            try:
                syscalls.mount(host, _fd_path(node), None, MS_BIND)
            except OSError as err:
                raise _step(f"bind {host} into {target}", host)(err) from err
            finally:
                os.close(node)
        for name, fstype, flags, options in _MINIMAL_SUBMOUNTS:
            os.mkdir(name, 0o755, dir_fd=dev)
            fd_below = pathwalk.open_in_root(dev, name)
            try:
                _mount(f"mount {fstype} on {target}/{name}", fstype, fd_below, fstype, flags,
                       options, target)
            finally:
                os.close(fd_below)
        for name, link in _MINIMAL_LINKS.items():
            os.symlink(link, name, dir_fd=dev)
    except OSError as err:
        raise _step(f"populate minimal {target}", target)(err) from err
    finally:
        os.close(dev)


def set_hostname(hostname: str) -> None:
    try:
        syscalls.sethostname(hostname)
    except OSError as err:
        raise _step("set hostname")(err) from err


def pivot_to_root(root_fd: int) -> None:
    """Make the assembled root ``/`` and detach the host's tree from this namespace."""
    try:
        os.fchdir(root_fd)
        # pivot_root(".", ".") stacks the old root on top of the new one; the
        # umount then removes it, with no put_old directory needed in the image.
        syscalls.pivot_root(".", ".")
        syscalls.umount2(".", MNT_DETACH)
        os.chdir("/")
    except OSError as err:
        raise _step("pivot_root into the image")(err) from err
