"""Write a root filesystem from image layers without ever touching anything outside it.

An OCI or docker layer is a tar stream written by anybody.  Its entries name
paths *inside* the image, and the tree they build may hold symlinks that point
anywhere (``var -> /outside/var``, ``.singularity.d/runscript -> /etc/passwd``).
Everything here works from a descriptor of the root and descriptors of the
directories below it, as runc's and umoci's unpackers do:

- a path's directories are resolved with chroot semantics (an absolute link
  restarts at the root, ``..`` stops there), each step opened with
  ``O_NOFOLLOW`` relative to the previous one, so no link can lead out;
- the last component is never followed: an entry replaces whatever is there
  (a symlink is removed, not written through), and every file is created with
  ``O_EXCL`` and its owner, mode and times are set through its own descriptor;
- directories' metadata is applied after the layer (a read-only directory
  would stop writes into it), to the very directory the entry made (same
  inode), never to whatever has taken its name since.

Whiteouts (``.wh.NAME``) name one entry of their directory; ``.wh..`` or
``.wh.`` are refused, other ``.wh..wh.*`` entries (aufs' own metadata) are
skipped.  Unpacking is bounded (``Budget``): a small archive cannot fill the
disk.  Any failure is an ``ImageError`` naming the entry.
"""

from __future__ import annotations

import contextlib
import errno
import lzma
import os
import stat
import tarfile
import zlib

from instancelib.errors import ImageError
from instancelib.linux import pathwalk
from instancelib.linux.userns import has_host_root

__all__ = ["Budget", "RootTree", "apply_layer", "remove_tree_at"]

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_NAME = 4095     # PATH_MAX - 1: the kernel could not use a longer path anyway
_MAX_DEPTH = 256     # components of one entry's name
_BLOCK = 4096
_ENTRY_COST = 512    # what one entry costs besides its data (a tar header's size)
_CACHED_DIRS = 64


class Budget:
    """How much an image may write when unpacked, counted before it is written.

    Each entry costs its data rounded up to 4 KiB blocks plus 512 bytes, so
    a layer of a million empty files counts too.  Exceeding ``limit`` raises
    ``ImageError`` before the entry that would exceed it is written.
    """

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.what = what
        self.used = 0

    def charge(self, size: int, entry: str = "") -> None:
        self.used += _ENTRY_COST + -(-max(size, 0) // _BLOCK) * _BLOCK
        if self.used > self.limit:
            where = f" (at {entry!r})" if entry else ""
            raise ImageError(f"{self.what} unpacks to more than the image cache may hold "
                             f"({_human(self.limit)}, INSTANCELIB_CACHE_MAX){where}")

    def members(self, layer: tarfile.TarFile, name: str) -> list[tarfile.TarInfo]:
        """The layer's entries, read one by one and charged as they are read."""
        members = []
        try:
            for member in layer:
                self.charge(member.size if member.isreg() else 0, member.name)
                members.append(member)
        except ImageError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as err:
            raise ImageError(f"{self.what}: layer {name} is not a readable tar: {err}") from err
        return members


def _human(size: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size} bytes"


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def entry_name(raw: str) -> str:
    """A layer entry's name as a relative in-image path; ``ImageError`` for an escape."""
    if len(raw) > _MAX_NAME:
        raise ImageError(f"a layer entry's name is {len(raw)} bytes long (at most {_MAX_NAME})")
    parts = _components(raw)
    if ".." in parts:
        raise ImageError(f"a layer entry escapes the image: {raw!r}")
    if len(parts) > _MAX_DEPTH:
        raise ImageError(f"a layer entry is nested {len(parts)} levels deep "
                         f"(at most {_MAX_DEPTH}): {raw[:80]!r}...")
    return "/".join(parts)


class RootTree:
    """A root directory, and descriptor-relative operations below it (see the module doc)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self.fd = os.open(self.root, _DIR_FLAGS)
        self._dirs: dict[str, int] = {}

    def close(self) -> None:
        self.forget()
        os.close(self.fd)

    def __enter__(self) -> RootTree:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def forget(self) -> None:
        """Drop cached directory descriptors (after anything that could change resolution)."""
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def directory(self, path: str, *, create: bool) -> int | None:
        """A descriptor (borrowed: do not close) of the in-root directory ``path``.

        Every symlink on the way is followed inside the root.  Missing
        directories are made (0755) with ``create``, else the result is None.

        Raises:
            OSError: ENOTDIR (a file on the way), ELOOP (too many links).
        """
        key = "/".join(_components(path))
        cached = self._dirs.get(key)
        if cached is not None:
            return cached
        fd = pathwalk.open_directory(self.fd, path, create=create)
        if fd is not None:
            if len(self._dirs) >= _CACHED_DIRS:
                self.forget()
            self._dirs[key] = fd
        return fd

    def parent(self, path: str, *, create: bool) -> tuple[int | None, str]:
        """(descriptor of the directory holding ``path``, its last component)."""
        head, _, base = path.rpartition("/")
        return self.directory(head, create=create), base

    def lstat(self, dir_fd: int, base: str) -> os.stat_result | None:
        try:
            return os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def remove(self, dir_fd: int, base: str) -> None:
        """Remove the entry ``base`` (a whole tree for a directory), never following a link.

        Removing a directory or a link can change how paths resolve: the
        cached descriptors are dropped then (``dir_fd`` included: look it up again).
        """
        info = self.lstat(dir_fd, base)
        if info is None:
            return
        if stat.S_ISDIR(info.st_mode) or stat.S_ISLNK(info.st_mode):
            remove_tree_at(dir_fd, base)
            self.forget()
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base, dir_fd=dir_fd)

    def owned_directory(self, path: str) -> int | None:
        """Like ``directory(create=False)``, but a descriptor of the caller's own to close."""
        fd = self.directory(path, create=False)
        return None if fd is None else os.dup(fd)

    def write_file(self, path: str, data: bytes, mode: int) -> None:
        """Create (or replace) the regular file ``path`` with ``data``."""
        dir_fd, base = self.parent(path, create=True)
        assert dir_fd is not None
        if self.lstat(dir_fd, base) is not None:
            self.remove(dir_fd, base)
            dir_fd, base = self.parent(path, create=True)
            assert dir_fd is not None
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def make_directory(self, path: str) -> None:
        """Make ``path`` a real directory: whatever else has its name is removed first."""
        dir_fd, base = self.parent(path, create=True)
        assert dir_fd is not None
        info = self.lstat(dir_fd, base)
        if info is not None and stat.S_ISDIR(info.st_mode):
            return
        if info is not None:
            self.remove(dir_fd, base)
            dir_fd, base = self.parent(path, create=True)
            assert dir_fd is not None
        os.mkdir(base, 0o755, dir_fd=dir_fd)

    def ensure_mount_point(self, path: str) -> None:
        """A directory at ``path`` as the instance will see it (links followed inside).

        Something else already there is left alone: the start deals with it.
        """
        with contextlib.suppress(OSError):
            self.directory(path, create=True)


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd`` (recursively for a directory) without following links.

    Read-only directories are opened up first (an ordinary user's extracted
    images have some).  Missing entries are not an error.
    """
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return
    fd = _open_for_removal(dir_fd, name)
    # Depth-first with an explicit stack of (descriptor, name in its parent).
    stack: list[tuple[int, str]] = [(fd, name)]
    try:
        while stack:
            top, _ = stack[-1]
            descended = False
            for child in os.listdir(top):
                try:
                    child_info = os.stat(child, dir_fd=top, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(child_info.st_mode):
                    stack.append((_open_for_removal(top, child), child))
                    descended = True
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child, dir_fd=top)
            if descended:
                continue
            done, done_name = stack.pop()
            os.close(done)
            parent = stack[-1][0] if stack else dir_fd
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(done_name, dir_fd=parent)
    finally:
        for fd_left, _ in stack:
            os.close(fd_left)


def _open_for_removal(dir_fd: int, name: str) -> int:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
        finally:
            os.close(fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    if os.fstat(fd).st_mode & 0o700 != 0o700 and not has_host_root():
        os.fchmod(fd, 0o700)
    return fd


# -- applying one layer --------------------------------------------------------------------------


def apply_layer(root: RootTree, layer: tarfile.TarFile, members: list[tarfile.TarInfo],
                name: str) -> None:
    """Apply one layer (its ``members``, from ``Budget.members``) onto ``root``.

    Raises:
        ImageError: a malformed or hostile entry, or a failure writing it.
    """
    current = ""
    try:
        for member in members:  # whiteouts first: they remove lower layers' entries only
            current = member.name
            _whiteout(root, member)
        directories: list[tuple[str, tarfile.TarInfo, tuple[int, int]]] = []
        as_root = has_host_root()
        for member in members:
            current = member.name
            made = _entry(root, layer, member, as_root)
            if made is not None:
                directories.append((entry_name(member.name), member, made))
        # Deepest first; each only if the directory the entry made is still at its place.
        for path, member, identity in reversed(directories):
            current = member.name
            _directory_metadata(root, path, member, identity, as_root)
    except ImageError:
        raise
    except (OSError, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ImageError(f"layer {name}: cannot apply {current!r}: {reason}",
                         errno=getattr(err, "errno", None)) from err


def _whiteout(root: RootTree, member: tarfile.TarInfo) -> None:
    path = entry_name(member.name)
    head, _, base = path.rpartition("/")
    if not base.startswith(WHITEOUT):
        return
    if base == OPAQUE:
        parent_head, _, directory = head.rpartition("/")
        if not directory:  # the root itself is opaque: empty it of lower layers
            target = root.directory("", create=False)
        else:
            parent_fd = root.directory(parent_head, create=False)
            info = root.lstat(parent_fd, directory) if parent_fd is not None else None
            if info is None or not stat.S_ISDIR(info.st_mode):
                return  # nothing of lower layers there (a link is replaced by the entry)
            target = root.directory(head, create=False)
        if target is not None:
            for child in os.listdir(target):
                root.remove(target, child)
                target = root.directory(head, create=False)
                assert target is not None
        return
    hidden = base[len(WHITEOUT):]
    if hidden.startswith(WHITEOUT):
        return  # aufs' own metadata (.wh..wh.plnk ...): nothing to remove
    if hidden in ("", ".", ".."):
        raise ImageError(f"a layer holds a whiteout of {hidden or 'nothing'!r}: "
                         f"{member.name!r}")
    parent_fd = root.directory(head, create=False)
    if parent_fd is not None and root.lstat(parent_fd, hidden) is not None:
        root.remove(parent_fd, hidden)


def _entry(root: RootTree, layer: tarfile.TarFile, member: tarfile.TarInfo,
           as_root: bool) -> tuple[int, int] | None:
    """Write one entry; for a directory, return its (device, inode)."""
    path = entry_name(member.name)
    base = path.rpartition("/")[2]
    if not path or base.startswith(WHITEOUT):
        return None
    dir_fd, base = root.parent(path, create=True)
    assert dir_fd is not None
    existing = root.lstat(dir_fd, base)
    if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
        root.remove(dir_fd, base)
        dir_fd, base = root.parent(path, create=True)
        assert dir_fd is not None
    if member.isdir():
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(base, 0o700, dir_fd=dir_fd)
        made = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
        return made.st_dev, made.st_ino
    if member.isreg():
        _regular_file(layer, member, dir_fd, base, as_root)
    elif member.issym():
        os.symlink(member.linkname, base, dir_fd=dir_fd)
        if as_root:
            os.chown(base, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
        _set_times(dir_fd, base, member)
        root.forget()  # a new link can change how later paths resolve
    elif member.islnk():
        _hard_link(root, member, dir_fd, base)
    elif member.isfifo() or member.ischr() or member.isblk():
        if member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=dir_fd)
        elif not as_root:
            return None  # an ordinary user cannot make device nodes; /dev is mounted anyway
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor),
                     dir_fd=dir_fd)
        _special_metadata(dir_fd, base, member, as_root)
    return None


def _regular_file(layer: tarfile.TarFile, member: tarfile.TarInfo, dir_fd: int, base: str,
                  as_root: bool) -> None:
    source = layer.extractfile(member)
    if source is None:
        raise ImageError(f"a layer's file has no data: {member.name!r}")
    fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        with source:
            left = member.size
            while left > 0:
                chunk = source.read(min(left, 1 << 20))
                if not chunk:
                    raise ImageError(f"a layer's file is truncated: {member.name!r}")
                left -= len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        if as_root:
            os.fchown(fd, member.uid, member.gid)  # before the mode: chown clears set-ID bits
        os.fchmod(fd, member.mode & (0o7777 if as_root else 0o777))
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)


def _hard_link(root: RootTree, member: tarfile.TarInfo, dir_fd: int, base: str) -> None:
    target_path = entry_name(member.linkname)
    target_head, _, target_base = target_path.rpartition("/")
    own_dir = os.dup(dir_fd)  # resolving the target may evict the cached descriptor
    try:
        target_dir = root.owned_directory(target_head) if target_base else None
        try:
            info = root.lstat(target_dir, target_base) if target_dir is not None else None
            if info is None:
                raise ImageError(f"a layer's hard link points to a missing file: "
                                 f"{member.name!r} -> {member.linkname!r}")
            if stat.S_ISDIR(info.st_mode):
                raise ImageError(f"a layer's hard link points to a directory: "
                                 f"{member.name!r} -> {member.linkname!r}")
            assert target_dir is not None
            os.link(target_base, base, src_dir_fd=target_dir, dst_dir_fd=own_dir,
                    follow_symlinks=False)
        finally:
            if target_dir is not None:
                os.close(target_dir)
    finally:
        os.close(own_dir)


def _special_metadata(dir_fd: int, base: str, member: tarfile.TarInfo, as_root: bool) -> None:
    """Owner, mode and times of a FIFO or device node, through an O_PATH descriptor of it."""
    if as_root:
        os.chown(base, member.uid, member.gid, dir_fd=dir_fd, follow_symlinks=False)
    fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind not in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK):
            raise OSError(errno.EINVAL, "not the node just made", base)
        # /proc/self/fd/N names the node itself (no link can be in between).
        os.chmod(f"/proc/self/fd/{fd}", member.mode & (0o7777 if as_root else 0o777))
    finally:
        os.close(fd)
    _set_times(dir_fd, base, member)


def _set_times(dir_fd: int, base: str, member: tarfile.TarInfo) -> None:
    with contextlib.suppress(OSError):
        os.utime(base, (member.mtime, member.mtime), dir_fd=dir_fd, follow_symlinks=False)


def _directory_metadata(root: RootTree, path: str, member: tarfile.TarInfo,
                        identity: tuple[int, int], as_root: bool) -> None:
    dir_fd, base = root.parent(path, create=False)
    if dir_fd is None:
        return
    try:
        fd = os.open(base, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return  # replaced by a later entry: its metadata is not this entry's
        raise
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != identity:
            return
        if as_root:
            os.fchown(fd, member.uid, member.gid)
        mode = member.mode & (0o7777 if as_root else 0o777)
        if not as_root:
            mode |= 0o700  # we must still be able to enter and change our own tree
        os.fchmod(fd, mode)
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
