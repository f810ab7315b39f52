"""A registry's running records read straight from their files, for the CLI's ``instance list``.

Singularity's clients list instances on nearly every call, and in a new
process each time, where importing the registry (``attrs`` above all) costs
more than the reading.  This reads the same files through the same checked
descriptors (``OwnerFiles``: directories opened one by one with
``O_NOFOLLOW`` and checked on their descriptors, records regular files of
the owner opened without following links and without blocking), and checks
each PID 1 is alive from ``/proc`` as ``InstanceRecord.is_alive`` does.

It never changes anything: whenever the full registry would have work to do
(a record to prune or re-publish, a lock without a record, a temporary file,
a directory or file it would refuse, anything it does not expect) it
answers ``None`` and the caller uses ``InstanceRecords``, which does it, or
raises the error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from instancelib.errors import InstanceError
from instancelib.linux import procfs
from instancelib.records import layout
from instancelib.records.files import OwnerFiles, Subdirs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["running_records"]

_MAX_RECORD = 1 << 20
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def running_records(root: str, subdirs: Subdirs, owner_uid: int,
                    pattern: str = "*") -> list[dict[str, Any]] | None:
    """The JSON of the running instances' records (sorted by name), or None (see module doc).

    ``root``/``subdirs``: the registry's root and its directories below it
    (``layout.subdirs``); ``pattern``: only ``*`` and plain names (a glob goes
    the full way).
    """
    if pattern != "*" and not set(pattern) <= _NAME_CHARS:
        return None
    files = OwnerFiles(Path(root), owner_uid, "", subdirs)
    try:
        with files.opened("instances") as directory:
            if directory is None:
                return None if os.path.lexists(files.instances_dir) else []
            return _running(files, directory, owner_uid, pattern)
    except (InstanceError, OSError):
        return None
    finally:
        files.close()


def _running(files: OwnerFiles, directory: int, owner_uid: int,
             pattern: str) -> list[dict[str, Any]] | None:
    names = os.listdir(directory)
    records = {n[:-5] for n in names if n.endswith(".json")}
    locks = {n[:-5] for n in names if n.endswith(".lock") and n != ".lock"}
    if records != locks or len(records) + len(locks) + (".lock" in names) != len(names):
        return None  # a lock without a record, a temporary file...: the full registry
    found = []
    for name in sorted(records):
        if pattern not in ("*", name):
            continue
        data = _read(files, directory, f"{name}.json")
        if data is None or data.get("instance") != name:
            return None
        pid, starttime = data.get("pid"), data.get("starttime")
        if (data.get("state") != "running" or data.get("uid") != owner_uid
                or not isinstance(pid, int) or not isinstance(starttime, int)
                or not procfs.is_alive(pid, starttime, uid=owner_uid, init=True)):
            return None  # to be pruned (or a start still being recorded)
        found.append(data)
    return found


def _read(files: OwnerFiles, directory: int, filename: str) -> dict[str, Any] | None:
    fd = files.open_file(directory, filename, os.O_RDONLY, what="a record")
    try:
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
