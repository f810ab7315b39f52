"""Removing cgroup directories whose processes are gone (the fork-server's, the caller's).

A cgroup stays busy (``EBUSY``) for a moment after its last process exited,
so removal is retried for a bounded time.  ``rmdir`` removes only an empty
cgroup: this can never take a cgroup from under a running process.

Only the standard library is imported: the fork-server uses this module.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable

__all__ = ["remove_empty"]


def remove_empty(directories: Iterable[str], *, wait: float = 1.0) -> list[str]:
    """``rmdir`` each directory, retrying the busy ones for ``wait`` seconds.

    Returns the directories still there (busy, or not empty) when the time ran out.
    """
    pending = list(directories)
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
        pending = busy
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    return pending
