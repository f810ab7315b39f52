"""An instance's logs: the service's stdout and stderr files, read and followed.

Files are opened through the registry's checked directory descriptors
(``records.store``): never a link, a FIFO or another user's file, even for
root reading a user's logs.  Like Singularity, a name's logs are appended to
by every instance that has had the name; an instance reads from where its own
lines begin (the offsets its record keeps), unless asked for everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from instancelib.errors import InvalidArgument, NotFound, RegistryError, StartError
from instancelib.linux import procfs
from instancelib.records.directory import InstanceRecords

if TYPE_CHECKING:
    from instancelib.instance import Instance

__all__ = ["ERR_TAIL_LINES", "FOLLOW_POLL", "LogReader", "check_tail", "open_for_append",
           "read_lines", "tail_since"]

ERR_TAIL_LINES = 20  # how much of the service's stderr a failed start's error carries
FOLLOW_POLL = 0.1    # seconds between looks at a followed log (and at whether PID 1 ended)
_CHUNK = 1 << 16


class LogReader:
    """An instance's log read in chunks as it grows: complete lines, then the rest.

    Opened through the registry's checked descriptors at this instance's first
    line (or the file's start with ``everything``); ``Instance.logs`` and the
    async face's ``logs`` both read through it.
    """

    def __init__(self, instance: Instance, *, stderr: bool, everything: bool = False) -> None:
        instance._check_owner()
        stream = "err" if stderr else "out"
        self._fd = instance.registry.store.open_log(instance.name, stream, write=False)
        self._pending = b""
        if self._fd is not None:
            offset = 0 if everything else instance._record.log_offsets.get(stream, 0)
            if 0 < offset <= os.fstat(self._fd).st_size:  # (truncated since: all is ours)
                os.lseek(self._fd, offset, os.SEEK_SET)

    def lines(self) -> list[str]:
        """The complete lines written since the last call (without line ends)."""
        if self._fd is None:
            return []
        chunks = [self._pending]
        while chunk := os.read(self._fd, _CHUNK):
            chunks.append(chunk)
        *complete, self._pending = b"".join(chunks).split(b"\n")
        return [line.decode(errors="replace") for line in complete]

    def rest(self) -> list[str]:
        """The last line, if the log does not end with a line end (once it is complete)."""
        rest, self._pending = self._pending, b""
        return [rest.decode(errors="replace")] if rest else []

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_lines(instance: Instance, *, stderr: bool, follow: bool,
               tail: int | None, everything: bool = False) -> Iterator[str]:
    """The lines of ``instance``'s log (see ``Instance.logs``); ``everything``: also those
    of earlier instances of the name."""
    check_tail(tail)
    return _follow(LogReader(instance, stderr=stderr, everything=everything), instance,
                   follow=follow, tail=tail)


def check_tail(tail: int | None) -> None:
    if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
        raise InvalidArgument(f"tail must be a non-negative integer (got {tail!r})")


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


def _follow(reader: LogReader, instance: Instance, *, follow: bool,
            tail: int | None) -> Iterator[str]:
    pidfd = -1
    try:
        first = reader.lines() if follow else reader.lines() + reader.rest()
        if tail is not None:
            first = first[len(first) - tail:] if tail else []
        yield from first
        if not follow:
            return
        try:
            pidfd = instance._pidfd()
        except NotFound:
            pidfd = -1
        while True:
            ended = pidfd < 0 or procfs.wait_pidfd(pidfd, FOLLOW_POLL)
            yield from reader.lines()
            if ended:
                yield from reader.rest()
                return
    finally:
        reader.close()
        if pidfd >= 0:
            os.close(pidfd)
