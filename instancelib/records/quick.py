"""A registry's running records read straight from their files, for the CLI's ``instance list``.

Singularity's clients list instances on nearly every call, and in a new
process each time, where importing the registry (``attrs`` above all) costs
more than the reading.  This reads the same files with the same checks
(directories opened one by one with ``O_NOFOLLOW`` and checked on their
descriptors: the owner's, writable by nobody else; records regular files of
the owner, opened without following links and without blocking), and checks
each PID 1 is alive from ``/proc`` as ``InstanceRecord.is_alive`` does.

It never changes anything: whenever the full registry would have work to do
(a record to prune or re-publish, a lock without a record, a temporary file,
anything it does not expect) it answers ``None`` and the caller uses
``InstanceRecords``, which does it.
"""

from __future__ import annotations

import json
import os
import stat

from instancelib.linux import procfs
from instancelib.records import layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["running_records"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_RECORD = 1 << 20
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _open_chain(root: str, parts: tuple[str, ...], owner_uid: int) -> int | None:
    """The records directory as a checked descriptor; None if absent or anything is off."""
    root = os.path.abspath(root)
    anchor, first = os.path.split(root)
    try:
        current = os.open(anchor or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for part in ((first,) if first else ()) + parts:
            child = os.open(part, _DIR, dir_fd=current)
            os.close(current)
            current = child
            info = os.fstat(current)
            if info.st_uid != owner_uid or info.st_mode & 0o022:
                os.close(current)
                return None
    except OSError:
        os.close(current)
        return None
    return current


def running_records(root: str, parts: tuple[str, ...], owner_uid: int,
                    pattern: str = "*") -> list[dict[str, Any]] | None:
    """The JSON of the running instances' records (sorted by name), or None (see module doc).

    ``root``/``parts``: the registry's root and its records directory below it;
    ``pattern``: only ``*`` and plain names (a glob goes the full way).
    """
    if pattern != "*" and not set(pattern) <= _NAME_CHARS:
        return None
    directory = _open_chain(root, parts, owner_uid)
    if directory is None:
        return None if os.path.lexists(os.path.join(root, *parts)) else []
    try:
        names = os.listdir(directory)
        records = {n[:-5] for n in names if n.endswith(".json")}
        locks = {n[:-5] for n in names if n.endswith(".lock") and n != ".lock"}
        if records != locks or len(records) + len(locks) + (".lock" in names) != len(names):
            return None  # a lock without a record, a temporary file...: the full registry
        found = []
        for name in sorted(records):
            if pattern not in ("*", name):
                continue
            data = _read(directory, f"{name}.json", owner_uid)
            if data is None or data.get("instance") != name:
                return None
            pid, starttime = data.get("pid"), data.get("starttime")
            if (data.get("state") != "running" or data.get("uid") != owner_uid
                    or not isinstance(pid, int) or not isinstance(starttime, int)
                    or not procfs.is_alive(pid, starttime, uid=owner_uid, init=True)):
                return None  # to be pruned (or a start still being recorded)
            found.append(data)
        return found
    except OSError:
        return None
    finally:
        os.close(directory)


def _read(directory: int, filename: str, owner_uid: int) -> dict[str, Any] | None:
    try:
        fd = os.open(filename, _FILE, dir_fd=directory)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != owner_uid:
            return None
        raw = os.read(fd, _MAX_RECORD)
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("schema") != layout.SCHEMA:
        return None
    if not all(isinstance(data.get(key), str) for key in ("img", "ip")):
        return None
    return data
