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
from collections.abc import Callable

__all__ = ["create_in_root", "open_directory", "open_in_root", "resolve_in_root"]

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


def open_directory(root_fd: int, path: str, *, create: bool = False, flags: int = os.O_RDONLY,
                   check: Callable[[str, os.stat_result], None] | None = None) -> int | None:
    """A descriptor of the directory ``path`` resolved inside ``root_fd``, links followed.

    Chroot semantics, from descriptors only: each component is opened with
    ``O_NOFOLLOW | O_DIRECTORY`` relative to the one before; a link is read
    and followed (an absolute one restarts at ``root_fd``, ``..`` stops
    there).  ``check(component, stat)`` sees every directory (from its own
    descriptor) and every link on the way, and raises to refuse one.
    Missing directories are made (0755) with ``create``, else the result is None.
    ``flags``: ``O_RDONLY`` (to list the directory) or ``O_PATH``.

    Raises:
        OSError: ENOTDIR (a file on the way), ELOOP (too many links), or the
            open's own error.
    """
    open_flags = flags | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    pending = _components(path)
    # Only the current directory is held: every component walked so far was a
    # real directory, so ".." of the current one is its real parent.
    current, depth, links = os.dup(root_fd), 0, 0
    try:
        while pending:
            part = pending.pop(0)
            if part == "..":
                if depth > 0:
                    parent = os.open("..", open_flags, dir_fd=current)
                    os.close(current)
                    current, depth = parent, depth - 1
                continue
            try:
                child = os.open(part, open_flags, dir_fd=current)
            except FileNotFoundError:
                if not create:
                    os.close(current)
                    return None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=current)
                pending.insert(0, part)
                continue
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                info = os.stat(part, dir_fd=current, follow_symlinks=False)
                if not stat.S_ISLNK(info.st_mode):
                    raise OSError(errno.ENOTDIR, "not a directory", part) from None
                if check is not None:
                    check(part, info)
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links",
                                  part) from None
                target = os.readlink(part, dir_fd=current)
                if target.startswith("/"):
                    os.close(current)
                    current, depth = os.dup(root_fd), 0
                pending[:0] = _components(target)
                continue
            if check is not None:
                try:
                    check(part, os.fstat(child))
                except BaseException:
                    os.close(child)
                    raise
            os.close(current)
            current, depth = child, depth + 1
    except BaseException:
        os.close(current)
        raise
    return current
