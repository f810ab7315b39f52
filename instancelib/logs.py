"""An instance's logs: the service's stdout and stderr files, read and followed.

Files are opened through the registry's checked directory descriptors
(``records.store``): never a link, a FIFO or another user's file, even for
root reading a user's logs.  Like Singularity, a name's logs are appended to
by every instance that has had the name.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

from instancelib.errors import InvalidArgument, NotFound, RegistryError, StartError
from instancelib.linux import procfs
from instancelib.records.directory import InstanceRecords

if TYPE_CHECKING:
    from instancelib.instance import Instance

__all__ = ["ERR_TAIL_LINES", "open_for_append", "read_lines", "tail_since"]

ERR_TAIL_LINES = 20  # how much of the service's stderr a failed start's error carries


def read_lines(instance: Instance, *, stderr: bool, follow: bool,
               tail: int | None) -> Iterator[str]:
    """The lines of ``instance``'s log (see ``Instance.logs``)."""
    if tail is not None and (not isinstance(tail, int) or tail < 0):
        raise InvalidArgument(f"tail must be a non-negative integer (got {tail!r})")
    instance._check_owner()
    fd = instance.registry.store.open_log(instance.name, "err" if stderr else "out",
                                          write=False)
    if fd is None:
        return iter(())
    return _follow(os.fdopen(fd, "rb"), instance, follow=follow, tail=tail)


def open_for_append(registry: InstanceRecords, name: str, stream: str) -> int:
    """The instance's log, opened for appending (never through a link; see ``records.store``)."""
    try:
        fd = registry.store.open_log(name, stream, write=True)
    except (RegistryError, OSError) as err:
        raise StartError(f"cannot open the log file: {err}", name=name,
                         path=str(registry.logs_dir / f"{name}.{stream}"),
                         errno=getattr(err, "errno", None)) from err
    assert fd is not None
    return fd


def tail_since(path: Path, offset: int, lines: int = ERR_TAIL_LINES) -> str | None:
    """The last lines written to ``path`` after ``offset`` (what this start wrote)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return None
    text = data.decode(errors="replace").rstrip()
    if not text:
        return None
    return "\n".join(text.splitlines()[-lines:])


def _follow(handle: IO[bytes], instance: Instance, *, follow: bool,
                tail: int | None) -> Iterator[str]:
    pidfd = -1
    try:
        if tail is not None:
            yield from (line.decode(errors="replace") for line in
                        deque((raw.rstrip(b"\n") for raw in handle), maxlen=tail))
            pending = b""
        else:
            pending = b""
            for raw in handle:
                if raw.endswith(b"\n"):
                    yield raw[:-1].decode(errors="replace")
                else:
                    pending = raw
        if not follow:
            if pending:
                yield pending.decode(errors="replace")
            return
        try:
            pidfd = instance._pidfd()
        except NotFound:
            pidfd = -1
        while True:
            ended = pidfd < 0 or procfs.wait_pidfd(pidfd, 0.1)
            chunk = handle.read()
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.decode(errors="replace")
            if ended:
                if pending:
                    yield pending.decode(errors="replace")
                return
    finally:
        handle.close()
        if pidfd >= 0:
            os.close(pidfd)
