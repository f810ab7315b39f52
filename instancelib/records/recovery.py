"""Finding a running instance whose record was lost, and publishing its record again.

Each instance's PID 1 holds its name's lock and a sealed memfd with its record and
environment (``records.record_copy``); the lock's note names the PID 1 once the start
has published it.  So a torn, garbled, stale or deleted record is re-published from
the PID 1 the note names (its descriptors show the lock's inode), falling back to a
scan of the owner's processes named ``instancelib-init``; ``recover_all`` finds, by that
scan, the instances whose record and lock file were both deleted.  Everything read
from a PID 1 is checked against the live process (PID, start time, owner) before it
is written back.  Callers hold the registry lock, except ``recover_all``, which takes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from instancelib.linux import procfs
from instancelib.records.record import COPY_NAME, MAX_COPY, RELEASE_WAIT, InstanceRecord, lock_note

if TYPE_CHECKING:
    from instancelib.records.store import RecordStore

__all__ = ["holder_gone", "lost_locks", "recover", "recover_all"]

log = logging.getLogger("instancelib")

_IN_FLIGHT = 1.0  # seconds a just-started PID 1 may take to receive its lock


def _files_holding(pid: int, lock: tuple[int, int], *,
                   wait: float) -> list[tuple[int, str, tuple[int, int]]] | None:
    """The descriptors of ``pid`` if one of them is the lock (waiting up to ``wait`` s).

    Right after a start returns, the lock and the record's copy may still be
    in flight to PID 1 (sent, not yet received): the named PID 1 gets a moment.
    """
    deadline = time.monotonic() + wait
    while True:
        files = procfs.open_files(pid)
        if lock in {identity for _fd, _target, identity in files}:
            return files
        if time.monotonic() >= deadline or not os.path.exists(f"/proc/{pid}"):
            return None
        time.sleep(0.002)


def recover(store: RecordStore, dir_fd: int, name: str) -> InstanceRecord | None:
    """Re-publish the record of the PID 1 holding the name's lock (under the lock)."""
    try:
        info = os.stat(f"{name}.lock", dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    lock = (info.st_dev, info.st_ino)
    # The lock names its PID 1 once the start has published it: look there first.
    candidates = []
    note = _note(store, dir_fd, name)
    if note is not None and note[0] == "running":
        noted = procfs.read_stat(note[1], owner=True)
        if noted is not None and noted.starttime == note[2]:
            candidates = [noted]
    if not candidates:
        candidates = procfs.processes_named(procfs.INIT_COMM, uid=store.owner_uid)
    for init in candidates:
        if init.comm != procfs.INIT_COMM or init.uid != store.owner_uid or not init.running:
            continue
        files = _files_holding(init.pid, lock, wait=_IN_FLIGHT if len(candidates) == 1
                               else 0.0)
        if files is None:
            continue
        found = _read_copy(store, init, files)
        if found is None or found[0].name != name:
            continue
        record, env, _registry = found
        _republish(store, dir_fd, record, env)
        log.warning("instance %r: its record was unreadable or stale; re-published it from "
                    "its PID 1 (%d)", name, init.pid)
        return record
    return None  # held by a start in progress (the starter, not a PID 1, holds it)


def recover_all(store: RecordStore) -> list[InstanceRecord]:
    """Find the owner's running instances that this registry has lost, and re-publish them.

    A scan of every process of the owner named ``instancelib-init``: each
    keeps a copy of its record saying which registry it belongs to.
    """
    recovered: list[InstanceRecord] = []
    with store.opened(create=True) as dir_fd:
        assert dir_fd is not None
        _recover_all(store, dir_fd, recovered)
    return recovered


def _recover_all(store: RecordStore, dir_fd: int, recovered: list[InstanceRecord]) -> None:
    with store.locked(dir_fd):
        ours = store.identity(dir_fd)
        for init, found in _copies(store):
            record, env, (registry, directory) = found
            if registry != ours and directory != str(store.instances_dir):
                continue
            current = store.read(dir_fd, record.name)
            if current is not None and current.is_alive(store.owner_uid):
                continue  # listed already (or the name is another live instance's)
            _republish(store, dir_fd, record, env)
            log.warning("instance %r: found running without a record; re-published it "
                        "from its PID 1 (%d)", record.name, init.pid)
            recovered.append(record)


def _copies(store: RecordStore) -> list[tuple[procfs.ProcStat, Any]]:
    """Every PID 1 of the owner with the copy of its record it keeps.

    A PID 1 without one is being started, or was started a moment ago and
    has its copy still in flight: those get a moment (a start that is being
    set up may take the whole moment; this is a repair, not a hot path).
    """
    found, waiting = [], []
    for init in procfs.processes_named(procfs.INIT_COMM, uid=store.owner_uid):
        copy = _read_copy(store, init, procfs.open_files(init.pid))
        if copy is not None:
            found.append((init, copy))
        else:
            waiting.append(init)
    deadline = time.monotonic() + _IN_FLIGHT
    while waiting and time.monotonic() < deadline:
        time.sleep(0.005)
        still = []
        for init in waiting:
            copy = _read_copy(store, init, procfs.open_files(init.pid))
            if copy is not None:
                found.append((init, copy))
            elif os.path.exists(f"/proc/{init.pid}"):
                still.append(init)
        waiting = still
    return found


def _read_copy(store: RecordStore, init: procfs.ProcStat,
               files: list[tuple[int, str, tuple[int, int]]]
               ) -> tuple[InstanceRecord, dict[str, str], tuple[tuple[int, int], str]] | None:
    """The record copy a PID 1 holds, if it is one and agrees with the live process."""
    for fd, target, _identity in files:
        if not target.startswith(f"/memfd:{COPY_NAME}"):
            continue
        try:
            copy = os.open(f"/proc/{init.pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.pread(copy, MAX_COPY, 0)
            finally:
                os.close(copy)
            content = json.loads(data)
            record = InstanceRecord.from_json(content["record"])
            env = {str(k): str(v) for k, v in dict(content["env"]).items()}
            registry = tuple(int(x) for x in content["registry"])
            directory = str(content["instancesDir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        live = procfs.read_stat(init.pid, owner=True)
        if (record.pid == init.pid and record.state == "running" and live is not None
                and record.starttime == live.starttime == init.starttime
                and record.uid == store.owner_uid == live.uid
                and len(registry) == 2):
            return record, env, ((registry[0], registry[1]), directory)
    return None


def _republish(store: RecordStore, dir_fd: int, record: InstanceRecord,
               env: dict[str, str]) -> None:
    store.write_env(dir_fd, record.name, env, None)
    store.write_record(dir_fd, record)


def lost_locks(store: RecordStore, dir_fd: int, names: set[str]) -> list[InstanceRecord]:
    """For lock files without a record: recover held ones, remove the others.

    A lock held by a start in progress (its note names a live starter) is
    left alone, without the process scan a recovery may need.
    """
    recovered = []
    for name in names:
        with store.locked(dir_fd):
            if store.read(dir_fd, name) is not None:
                continue
            lock = store.try_lock(dir_fd, name)
            if lock is None and holder_gone(store, dir_fd, name):
                lock = store.try_lock(dir_fd, name, wait=RELEASE_WAIT)
            if lock is None:
                if _being_started(store, dir_fd, name):
                    continue
                record = recover(store, dir_fd, name)
                if record is not None:
                    recovered.append(record)
                continue
            if lock >= 0:
                try:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{name}.lock", dir_fd=dir_fd)
                finally:
                    os.close(lock)
    return recovered


def holder_gone(store: RecordStore, dir_fd: int, name: str) -> bool:
    """Whether the lock's note names a PID 1 that has ended (the lock is on its way out)."""
    note = _note(store, dir_fd, name)
    return (note is not None and note[0] == "running"
            and not procfs.is_alive(note[1], note[2], uid=store.owner_uid, init=True))


def _being_started(store: RecordStore, dir_fd: int, name: str) -> bool:
    note = _note(store, dir_fd, name)
    return (note is not None and note[0] == "starting"
            and procfs.is_alive(note[1], note[2], uid=store.owner_uid))


def _note(store: RecordStore, dir_fd: int, name: str) -> tuple[str, int, int] | None:
    """The note in the name's lock file (None: no file, or no note)."""
    fd = store.open_lock(dir_fd, name)
    if fd is None:
        return None
    try:
        return lock_note(fd)
    finally:
        os.close(fd)
