"""The directories and files of one owner's registry, opened so that the owner cannot trick us.

**Hostile directories.**  Root may act on a user's registry (``user=``), and
the user can swap anything in it at any moment.  So every directory is
opened once, with ``O_DIRECTORY | O_NOFOLLOW``, relative to the one above,
and checked on its descriptor (a directory of the owner that others cannot
write); every scan, open, rename and unlink then happens relative to that
descriptor.  Files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and must be
regular files of the owner (a FIFO cannot hang a reader); a file root
creates there is given to the owner.

A record or pid file is replaced by writing a temporary file and renaming it
(``write_file``): a reader sees the old or the new file, never half of one;
a write that fails or is interrupted leaves no temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from instancelib.errors import PermissionDenied, RegistryError
from instancelib.linux import procfs

__all__ = ["OwnerFiles", "Subdirs", "dead_writer", "write_all", "writer_id"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# The directories below the root that hold the records ("instances") and the logs,
# each a chain of names opened one by one (see _open_chain).
Subdirs = dict[str, tuple[str, ...]]


class OwnerFiles:
    """The registry directories and files of one owner on this host (see the module doc).

    ``subdirs`` names the chains below ``root`` for ``instances`` and ``logs``
    (default ``instances/<host>`` and ``logs/<host>``).
    """

    def __init__(self, root: Path, owner_uid: int, host: str,
                 subdirs: Subdirs | None = None, root_variable: str = "INSTANCELIB_HOME") -> None:
        self.root = root
        self.owner_uid = owner_uid
        self.host = host
        self.subdirs: Subdirs = subdirs or {"instances": ("instances", host),
                                            "logs": ("logs", host)}
        # The variable that moves the root (named when the root cannot be made).
        self.root_variable = root_variable
        self.instances_dir = root.joinpath(*self.subdirs["instances"])
        self.logs_dir = root.joinpath(*self.subdirs["logs"])
        self._held: dict[str, tuple[int, tuple[int, int]]] = {}  # kind: (fd, (dev, inode))
        self._retired: list[int] = []  # replaced descriptors: closed with the store

    # -- directories ----------------------------------------------------------------------

    @contextlib.contextmanager
    def opened(self, kind: str = "instances", *, create: bool = False) -> Iterator[int | None]:
        """A checked descriptor of ``instances/<host>`` or ``logs/<host>`` (None: absent).

        Opening the chain costs a dozen system calls, and a start needs these
        directories six times: the descriptor is kept, and reused while the
        path still names that directory and it still passes the checks (two
        calls).  A descriptor is only ever closed with the store, so one in use
        in another thread never goes away under it.
        """
        held = self._held.get(kind)
        if held is not None:
            fd, identity = held
            path = self.instances_dir if kind == "instances" else self.logs_dir
            try:
                info = os.lstat(path)
            except OSError:
                info = None
            if info is not None and (info.st_dev, info.st_ino) == identity:
                self._check_dir(fd, path)
                yield fd
                return
            self._retired.append(fd)
            del self._held[kind]
        opened = self._open_chain(kind, create)
        if opened is not None:
            info = os.fstat(opened)
            self._held[kind] = (opened, (info.st_dev, info.st_ino))
        yield opened

    def close(self) -> None:
        """Close the kept directory descriptors (when nothing uses the store any more)."""
        for fd in [fd for fd, _identity in self._held.values()] + self._retired:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()
        self._retired.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _open_chain(self, kind: str, create: bool) -> int | None:
        anchor = self.root.parent if self.root.name else self.root
        parts = ([self.root.name] if self.root.name else []) + list(self.subdirs[kind])
        try:
            current = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                return None
            try:
                anchor.mkdir(mode=0o700, parents=True, exist_ok=True)
                current = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as err:
                # A service user whose home does not exist (systemd's User=www-data): say
                # what to set rather than where it failed.
                raise RegistryError(
                    f"cannot create the registry directory {self.root} ({err.strerror or err}"
                    f"): set {self.root_variable} to a directory you own (or HOME to an "
                    "existing home)", path=str(self.root)) from err
        except OSError as err:
            raise RegistryError("cannot open the registry directory", path=str(anchor),
                                errno=err.errno) from err
        path = anchor
        try:
            if not self.root.name:
                self._check_dir(current, path)
            for part in parts:
                path = path / part
                child = self._open_dir(current, part, path, create)
                os.close(current)
                current = child
                if current < 0:
                    return None
                self._check_dir(current, path)
        except BaseException:
            if current >= 0:
                os.close(current)
            raise
        return current

    def _open_dir(self, parent: int, part: str, path: Path, create: bool) -> int:
        """``part`` in ``parent`` as a directory descriptor; -1 if absent and not ``create``."""
        for _attempt in range(2):
            try:
                return os.open(part, _DIR, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    return -1
                try:
                    os.mkdir(part, 0o700, dir_fd=parent)
                except FileExistsError:
                    pass
                except OSError as err:
                    raise RegistryError("cannot create the registry directory", path=str(path),
                                        errno=err.errno) from err
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    with contextlib.suppress(OSError):
                        if stat.S_ISLNK(os.stat(part, dir_fd=parent,
                                                follow_symlinks=False).st_mode):
                            raise RegistryError("refusing a registry directory that is a "
                                                "symlink", path=str(path)) from None
                    raise RegistryError("the registry path is not a directory",
                                        path=str(path)) from None
                raise RegistryError("cannot open the registry directory", path=str(path),
                                    errno=err.errno) from err
        raise RegistryError("the registry directory keeps disappearing", path=str(path))

    def _check_dir(self, fd: int, path: Path) -> None:
        info = os.fstat(fd)
        if info.st_uid != self.owner_uid:
            raise PermissionDenied(f"the registry directory belongs to UID {info.st_uid}, not "
                                   f"UID {self.owner_uid}", path=str(path))
        if info.st_mode & 0o022:
            raise RegistryError(f"the registry directory is writable by others "
                                f"(mode {stat.S_IMODE(info.st_mode):o})", path=str(path))

    def ensure(self) -> None:
        """Create (0700) and check the registry's directories."""
        for kind in ("instances", "logs"):
            with self.opened(kind, create=True):
                pass

    def identity(self, dir_fd: int) -> tuple[int, int]:
        info = os.fstat(dir_fd)
        return info.st_dev, info.st_ino

    # -- files ------------------------------------------------------------------------------

    def open_file(self, dir_fd: int, filename: str, flags: int, *, what: str,
                  directory: Path | None = None) -> int:
        """Open a file of the registry: never through a link, only a regular file of the owner.

        A file root creates in another user's registry is given to that user.

        Raises:
            RegistryError: a link, a FIFO or device, or another user's file.
            FileNotFoundError: absent (and not ``O_CREAT``).
        """
        shown = str((directory or self.instances_dir) / filename)
        base = (flags & ~os.O_CREAT) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        created = False
        try:
            try:
                fd = os.open(filename, base, dir_fd=dir_fd)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
                try:  # made here (O_EXCL): then, and only then, ours to give to the owner
                    fd = os.open(filename, base | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
                    created = True
                except FileExistsError:
                    fd = os.open(filename, base, dir_fd=dir_fd)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RegistryError(f"refusing {what}: it is a symlink", path=shown) from err
            if err.errno in (errno.ENXIO, errno.EISDIR):
                raise RegistryError(f"refusing {what}: not a regular file", path=shown) from err
            if err.errno == errno.ENOENT:
                raise
            raise RegistryError(f"cannot open {what} ({err.strerror})", path=shown,
                                errno=err.errno) from err
        try:
            if created and os.geteuid() != self.owner_uid:
                os.fchown(fd, self.owner_uid, os.fstat(dir_fd).st_gid)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != self.owner_uid:
                raise RegistryError(f"refusing {what}: not a regular file of UID "
                                    f"{self.owner_uid}", path=shown)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write_file(self, dir_fd: int, filename: str, data: bytes, *, what: str) -> None:
        """Replace ``filename`` atomically (temporary file + rename); typed errors, no debris."""
        temporary = f".{filename}.{writer_id()}.{os.urandom(3).hex()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                write_all(fd, data)
                if os.geteuid() != self.owner_uid:
                    os.fchown(fd, self.owner_uid, os.fstat(dir_fd).st_gid)
            finally:
                os.close(fd)
            os.rename(temporary, filename, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as err:  # an interrupted write (Ctrl-C) leaves no debris either
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            if not isinstance(err, OSError):
                raise
            raise RegistryError(f"cannot write {what}",
                                path=str(self.instances_dir / filename),
                                errno=err.errno) from err


_writer_id: list[tuple[int, str]] = []


def writer_id() -> str:
    """``PID-STARTTIME`` of this process, in temporary files' names (to tell dead writers)."""
    pid = os.getpid()
    if not _writer_id or _writer_id[0][0] != pid:
        me = procfs.read_stat(pid)
        _writer_id[:] = [(pid, f"{pid}-{me.starttime if me else 0}")]
    return _writer_id[0][1]


def dead_writer(temporary: str) -> bool:
    """Whether a temporary file's writer (``.FILE.PID-STARTTIME.RANDOM.tmp``) has ended."""
    writer = temporary.rsplit(".", 3)[-3] if temporary.count(".") >= 4 else ""
    pid, _, starttime = writer.partition("-")
    if not (pid.isdigit() and starttime.isdigit()):
        return False  # not one of ours: leave it
    return not procfs.is_alive(int(pid), int(starttime))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
