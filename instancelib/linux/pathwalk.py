"""Resolve and open paths *inside* a container root, never outside it.

An image may hold symlinks such as ``/etc/resolv.conf -> /run/systemd/...``.
Mounting onto ``<root>/etc/resolv.conf`` with an ordinary path would follow
that absolute link out of the image onto the host (runc's CVE-2021-30465
class of bug).  So mount targets are first resolved here with chroot semantics
(absolute links restart at the root, ``..`` stops at the root), then opened
component by component with ``O_NOFOLLOW``; the mount goes onto the resulting
``/proc/self/fd/N``.  A symlink swapped in meanwhile makes the open fail; it
can never redirect the mount.

Only the standard library is imported: instance PID 1 uses this module.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

__all__ = ["create_in_root", "open_in_root", "resolve_in_root"]

_MAX_LINKS = 40
_O_PATH = getattr(os, "O_PATH", 0o10000000)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def resolve_in_root(root: str, path: str) -> tuple[str, bool]:
    """Resolve ``path`` inside ``root`` as if ``root`` were ``/``.

    Returns:
        ``(canonical, exists)``: the absolute in-root path with every symlink
        and ``..`` resolved (missing trailing components are kept as given),
        and whether that path exists.

    Raises:
        OSError: ELOOP for too many links, ENOTDIR when a non-directory sits in
            the middle of the path.
    """
    pending = _components(path)
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        full = os.path.join(root, *resolved, part)
        try:
            info = os.lstat(full)
        except FileNotFoundError:
            resolved.append(part)
            for rest in pending:
                if rest == "..":
                    if resolved:
                        resolved.pop()
                else:
                    resolved.append(rest)
            return "/" + "/".join(resolved), False
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(full)
            if target.startswith("/"):
                resolved = []
            pending = _components(target) + pending
            continue
        if pending and not stat.S_ISDIR(info.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        resolved.append(part)
    return "/" + "/".join(resolved), True


def open_in_root(root_fd: int, canonical: str) -> int:
    """Open a canonical in-root path as an ``O_PATH`` fd without following any link."""
    fd = os.dup(root_fd)
    try:
        for part in _components(canonical):
            next_fd = os.open(part, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_in_root(root_fd: int, canonical: str, *, directory: bool, mode: int = 0o755) -> None:
    """Create a missing mount point (and its missing parents) without following links."""
    parts = _components(canonical)
    fd = os.dup(root_fd)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if last and not directory:
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=fd))
                return
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=fd)
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            os.close(fd)
            fd = next_fd
    finally:
        os.close(fd)
