"""cgroup directories as every layer uses them: leaf names, joining, removing empty ones.

- An instance's (or a fork-server spare's) cgroup is a leaf named
  ``i.UID.PID.RANDOM``: its owner, the process that made it (the caller, or
  the fork-server for a spare) and a random part.  Sweeps recognise their own
  leaves, and those of dead processes, by the name alone.
- A process joins a cgroup by writing 0 into its ``cgroup.procs``.
- A cgroup stays busy (``EBUSY``) for a moment after its last process exited,
  so removal is retried for a bounded time.  ``rmdir`` removes only an empty
  cgroup: this can never take a cgroup from under a running process.

Only the standard library is imported: the fork-server and PID 1 use this module.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable, Mapping

__all__ = ["join", "leaf_name", "leaf_owner", "remove_empty"]


def leaf_name(uid: int, maker: int) -> str:
    """A new leaf name for a cgroup of owner ``uid`` made by process ``maker``."""
    return f"i.{uid}.{maker}.{os.urandom(3).hex()}"


def leaf_owner(name: str) -> tuple[int, int] | None:
    """``(uid, maker PID)`` of a leaf name (``leaf_name``'s form); None for any other name."""
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "i" or not parts[1].isdigit() \
            or not parts[2].isdigit() or not parts[3].isalnum():
        return None
    return int(parts[1]), int(parts[2])


def join(procs_files: Iterable[str], roots: Mapping[str, int] | None = None) -> None:
    """Move the calling process into cgroups (each a ``cgroup.procs`` file).

    ``roots`` maps hierarchy mount points to directory descriptors opened
    earlier: a path under one is opened relative to it (after pivot_root the
    mount point is no longer in view).  Raises ``OSError`` with the path.
    """
    for path in procs_files:
        root_fd, relative = None, path
        for mount, fd in (roots or {}).items():
            if path.startswith(mount + "/"):
                root_fd, relative = fd, path[len(mount) + 1:]
                break
        try:
            fd = os.open(relative, os.O_WRONLY | os.O_CLOEXEC, dir_fd=root_fd)
        except OSError as err:
            raise OSError(err.errno, err.strerror, path) from None
        try:
            os.write(fd, b"0")
        except OSError as err:
            raise OSError(err.errno, err.strerror, path) from None
        finally:
            os.close(fd)


def remove_empty(directories: Iterable[str], *, wait: float = 1.0,
                 refused: list[tuple[str, OSError]] | None = None) -> list[str]:
    """``rmdir`` each directory, retrying the busy ones for ``wait`` seconds.

    Returns the directories still there when the time ran out: busy ones,
    and ones the kernel refused for another reason (those also go, with
    the error, into ``refused`` when given).
    """
    pending = list(directories)
    failed: list[str] = []
    deadline = time.monotonic() + wait
    while pending:
        busy = []
        for directory in pending:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as err:
                if err.errno == errno.EBUSY:
                    busy.append(directory)
                else:
                    failed.append(directory)
                    if refused is not None:
                        refused.append((directory, err))
        pending = busy
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    return pending + failed
