"""A per-user cache of root filesystems made from images (extracted squashfs, OCI layers).

Layout: ``$INSTANCELIB_CACHE`` or ``$XDG_CACHE_HOME/instancelib`` or
``~/.cache/instancelib``, then ``rootfs/<key>/`` (the root filesystem),
``rootfs/<key>.build`` and ``rootfs/<key>.lock``.  An entry is built in a
temporary directory and renamed into place, so a half-built entry is never
used; builders of one key take ``.build`` exclusively, so it is built once.
An instance using an entry holds ``.lock`` shared for its whole life (its
PID 1 keeps the descriptor); eviction only removes entries whose ``.lock`` it
can take exclusively and that were not handed out in the last minute (the
moment between handing an entry out and its PID 1 taking the lock).

The cache is bounded (``$INSTANCELIB_CACHE_MAX``, bytes or ``10G``-style,
default 10 GiB): after each new entry the least recently used idle entries
are removed until the total fits.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from instancelib.errors import ImageError, InvalidArgument, PermissionDenied
from instancelib.image import layers
from instancelib.verbosity import VERBOSE

__all__ = ["cache_root", "entry", "max_bytes"]

log = logging.getLogger("instancelib")

DEFAULT_MAX = 10 << 30
RECENT = 60.0  # seconds an entry handed out is safe from eviction before its instance locks it
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?\Z", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def cache_root() -> Path:
    configured = os.environ.get("INSTANCELIB_CACHE")
    if configured:
        return Path(configured).absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "instancelib"


def max_bytes() -> int:
    configured = os.environ.get("INSTANCELIB_CACHE_MAX")
    if not configured:
        return DEFAULT_MAX
    match = _SIZE.match(configured.strip())
    if not match:
        raise InvalidArgument(f"INSTANCELIB_CACHE_MAX must be a size like 10G (got {configured!r})")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ImageError("the image cache is not a plain directory", path=str(path))
    if info.st_uid != os.geteuid():
        raise PermissionDenied(f"the image cache belongs to UID {info.st_uid}", path=str(path))


@contextlib.contextmanager
def _locked(lock: Path, how: int) -> Iterator[int]:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
        yield fd
    finally:
        os.close(fd)


def entry(key: str, build: Callable[[Path], None], *, what: str) -> tuple[Path, Path]:
    """The cached root filesystem for ``key``, built with ``build(directory)`` if needed.

    Returns ``(directory, lock)``: an instance using the directory must hold
    ``lock`` shared while it runs.
    """
    directory = cache_root() / "rootfs"
    _private_dir(directory)
    target = directory / key
    lock = directory / f"{key}.lock"
    with _locked(directory / f"{key}.build", fcntl.LOCK_EX):
        lock.touch(mode=0o600)  # the entry's last use, for eviction
        if target.is_dir():
            log.log(VERBOSE, "%s: using the copy in the cache at %s", what, target)
            return target, lock
        # We hold the key's build lock: any temporary of this key is a dead builder's.
        for stale in directory.glob(f".{key}.*.tmp"):
            remove_tree(stale)
        temporary = directory / f".{key}.{os.getpid()}.tmp"
        temporary.mkdir(mode=0o700)
        try:
            build(temporary)
            os.chmod(temporary, 0o755)
            os.rename(temporary, target)
        except BaseException:
            remove_tree(temporary)
            raise
        log.log(VERBOSE, "%s: extracted once into the cache at %s", what, target)
    evict(keep=key)
    return target, lock


def _size(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def evict(*, keep: str | None = None, limit: int | None = None) -> list[str]:
    """Remove least recently used idle entries until the cache fits; return their keys."""
    directory = cache_root() / "rootfs"
    if not directory.is_dir():
        return []
    budget = max_bytes() if limit is None else limit
    entries = []
    for child in directory.iterdir():
        lock = directory / f"{child.name}.lock"
        if child.is_dir() and not child.name.startswith(".") and lock.exists():
            entries.append((lock.stat().st_mtime, child, lock))
    sizes = {child: _size(child) for _, child, _ in entries}
    total = sum(sizes.values())
    removed = []
    for _, child, lock in sorted(entries, key=lambda item: item[0]):
        if total <= budget:
            break
        if child.name == keep:
            continue
        if time.time() - lock.stat().st_mtime < RECENT:
            continue  # just handed out: its instance may be about to lock it
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # an instance uses it
            remove_tree(child)
            for suffix in (".lock", ".build"):
                (directory / f"{child.name}{suffix}").unlink(missing_ok=True)
        finally:
            os.close(fd)
        total -= sizes[child]
        removed.append(child.name)
        log.log(VERBOSE, "image cache: removed %s (least recently used)", child.name)
    return removed


def remove_tree(path: Path) -> None:
    """Remove a tree, read-only directories included (extracted images have some).

    Through descriptors, never following a link: an image's tree can hold
    links to anywhere.
    """
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        layers.remove_tree_at(parent, path.name)
    except OSError as err:
        log.warning("could not remove all of %s: %s", path, err)
    finally:
        os.close(parent)
