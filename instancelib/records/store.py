"""The records of one owner's registry: claims, locks, records, environments, logs.

Layout (``root`` is ``$INSTANCELIB_HOME`` or ``~/.instancelib``)::

    root/instances/<hostname>/<name>.json   the record (what ``instance list`` shows)
    root/instances/<hostname>/<name>.lock   the name's lock, held by the instance's PID 1;
                                            it also holds the environment, for exec
    root/instances/<hostname>/.lock         serialises claims, prunes and recoveries
    root/logs/<hostname>/<name>.out|.err    the service's output (appended)

Every directory and file is opened as ``files.OwnerFiles`` opens them: the
owner may swap anything in their registry at any moment.

**Never lose an instance.**  A name is claimed under the registry lock by
taking ``<name>.lock`` exclusively; the starter hands that lock to the
instance's PID 1, which holds it for its whole life together with a sealed
in-memory copy of its record and environment (``records.record_copy``).  So
a record that is torn, garbled or deleted never frees the name while the
instance runs (a second start of the name is a ``NameConflict``), and the
record is re-published from its PID 1's copy when it is next read; an
instance whose record and lock file are both gone is found by
``recover_all`` (a scan of the owner's PID 1s).  Only a name nobody holds is
ever pruned.

Records are written to a temporary file and renamed into place (a reader
sees the old or the new record, never half of one), and not fsynced: a
record describes running processes, none of which survives a crash of the
machine.  A write that fails (a full disk) raises ``RegistryError`` and
leaves no temporary file; those of a writer killed mid-write are removed by
the next scan.

It knows records and files; it knows no ``Instance`` and no cgroups.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator

from instancelib.errors import NameConflict, RegistryError
from instancelib.linux import procfs
from instancelib.records import recovery
from instancelib.records.files import OwnerFiles, dead_writer
from instancelib.records.record import (
    MAX_COPY,
    NOTE_SIZE,
    RELEASE_WAIT,
    InstanceRecord,
    NameLock,
    lock_note,
    note_lock,
    record_copy,
)

__all__ = ["RecordStore"]

log = logging.getLogger("instancelib")

_MAX_RECORD = 1 << 20
_READ_CHUNK = 1 << 16  # below malloc's mmap threshold: records are read a thousand at a time


def _flock(fd: int, wait: float) -> bool:
    """Lock ``fd`` exclusively, trying for ``wait`` seconds; False if it stays held."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


class RecordStore(OwnerFiles):
    """The files of one owner's registry on this host (see the module doc)."""

    @contextlib.contextmanager
    def locked(self, dir_fd: int) -> Iterator[None]:
        """The registry-wide lock (claims, prunes, recoveries)."""
        fd = self.open_file(dir_fd, ".lock", os.O_RDWR | os.O_CREAT, what="the registry lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- records ----------------------------------------------------------------------------

    def entries(self, dir_fd: int) -> tuple[dict[str, tuple[int, int, int]], set[str]]:
        """Record files by name with their (inode, mtime_ns, size), and the names with a lock.

        Temporary files of writers that died (a caller killed mid-write) are removed.
        """
        records: dict[str, tuple[int, int, int]] = {}
        locks: set[str] = set()
        temporaries = []
        with os.scandir(dir_fd) as found:
            for entry in found:
                name = entry.name
                if name.endswith(".json"):
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    records[name[:-5]] = (info.st_ino, info.st_mtime_ns, info.st_size)
                elif name.endswith(".lock") and len(name) > 5:  # ".lock": the registry's
                    locks.add(name[:-5])
                elif name.endswith(".tmp") and name.startswith("."):
                    temporaries.append(name)
        stale = [name for name in temporaries if dead_writer(name)]
        if stale:
            with self.locked(dir_fd):
                for name in stale:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=dir_fd)
        return records, locks

    def read(self, dir_fd: int, name: str) -> InstanceRecord | None:
        """Read a record; ``None`` if absent.  An unreadable record counts as absent."""
        try:
            fd = os.open(f"{name}.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                         | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENXIO):
                return None
            raise RegistryError("cannot read an instance record", name=name,
                                path=str(self.instances_dir / f"{name}.json"),
                                errno=err.errno) from err
        try:
            data = os.read(fd, _READ_CHUNK)
            while len(data) <= _MAX_RECORD and len(data) % _READ_CHUNK == 0:
                more = os.read(fd, _READ_CHUNK)
                if not more:
                    break
                data += more
        except OSError:
            return None  # a directory, a FIFO...: not a record
        finally:
            os.close(fd)
        try:
            if not data or len(data) > _MAX_RECORD:
                raise ValueError("empty or too large")
            record = InstanceRecord.from_json(json.loads(data))
        except ValueError:
            return None
        return record if record.name == name else None

    def write_record(self, dir_fd: int, record: InstanceRecord) -> None:
        self.write_file(dir_fd, f"{record.name}.json", json.dumps(record.to_json()).encode(),
                        what="the instance record")

    def claim(self, name: str, *, record: InstanceRecord | None = None) -> NameLock:
        """Take the name: lock ``<name>.lock`` and note in it who is starting it.

        A start in progress is told by its lock alone (``starting PID
        STARTTIME``); ``record``, if given, is written as the name's record too.

        Raises:
            NameConflict: a running or starting instance has the name.
            RegistryError: the registry cannot be written (a full disk...).
        """
        with self.opened("logs", create=True):
            pass
        with self.opened(create=True) as dir_fd:
            assert dir_fd is not None
            with self.locked(dir_fd):
                return NameLock(self._claim(dir_fd, name, record))

    def _claim(self, dir_fd: int, name: str, record: InstanceRecord | None) -> int:
        lock = self.open_file(dir_fd, f"{name}.lock", os.O_RDWR | os.O_CREAT,
                              what="the instance's name lock")
        try:
            # A lock whose PID 1 has ended is released by the kernel a moment later.
            if not _flock(lock, 0.0) and not (recovery.holder_gone(self, dir_fd, name)
                                              and _flock(lock, RELEASE_WAIT)):
                raise BlockingIOError
        except BlockingIOError:
            holder = lock_note(lock)
            os.close(lock)
            # Held: a live instance (recovered here if its record was lost) or a start.
            existing = self.read(dir_fd, name) or recovery.recover(self, dir_fd, name)
            raise self._conflict(name, existing, holder) from None
        except BaseException:
            os.close(lock)
            raise
        try:
            existing = self.read(dir_fd, name)
            # A "starting" record whose name nobody holds is a start that was abandoned.
            if existing is not None and existing.state == "running" and existing.is_alive(
                    self.owner_uid):
                raise self._conflict(name, existing, None)
            me = procfs.read_stat(os.getpid())
            try:
                note_lock(lock, "starting", os.getpid(), me.starttime if me else 0)
            except OSError as err:
                raise RegistryError("cannot write the instance's name lock", name=name,
                                    path=str(self.instances_dir / f"{name}.lock"),
                                    errno=err.errno) from err
            if record is not None:
                self.write_record(dir_fd, record)
        except BaseException:
            # We hold the lock, under the registry lock: no instance has it; it goes.
            with contextlib.suppress(OSError):
                os.unlink(f"{name}.lock", dir_fd=dir_fd)
            os.close(lock)
            raise
        return lock

    def _conflict(self, name: str, existing: InstanceRecord | None,
                  holder: tuple[str, int, int] | None) -> NameConflict:
        # Singularity's words first ("instance NAME already exists"): scripts grep for them.
        if existing is not None and existing.state == "running":
            return NameConflict(f"instance {name} already exists (running, PID {existing.pid})",
                                name=name, pid=existing.pid, named=True)
        starter = existing.owner_pid if existing is not None else (
            holder[1] if holder is not None and holder[0] == "starting" else None)
        what = f"being started by process {starter}" if starter else "being started"
        return NameConflict(f"instance {name} already exists ({what})", name=name, pid=starter,
                            named=True)

    def publish(self, record: InstanceRecord, env: dict[str, str],
                lock: NameLock | None = None) -> None:
        """Write the running instance's record (and its environment); note it in ``lock``."""
        with self.opened() as dir_fd:
            if dir_fd is None:
                raise RegistryError("the registry directory disappeared during the start",
                                    name=record.name, path=str(self.instances_dir))
            self.write_env(dir_fd, record.name, env, lock.fd if lock is not None else None)
            self.write_record(dir_fd, record)
        if lock is not None:
            try:
                note_lock(lock.fd, "running", record.pid, record.starttime)
            except OSError as err:
                raise RegistryError("cannot write the instance's name lock", name=record.name,
                                    errno=err.errno) from err

    def write_env(self, dir_fd: int, name: str, env: dict[str, str], lock: int | None) -> None:
        """The environment, after the note in the name's lock file (no file of its own).

        Written before the record is published, so whoever finds the record
        finds the environment complete; only the instance's own start (or a
        recovery) writes it.
        """
        fd = lock if lock is not None else self.open_file(
            dir_fd, f"{name}.lock", os.O_RDWR | os.O_CREAT, what="the instance's name lock")
        try:
            data = json.dumps(env).encode()
            if lock is None and lock_note(fd) is None:
                os.pwrite(fd, b" " * NOTE_SIZE, 0)
            view, offset = memoryview(data), NOTE_SIZE
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            os.ftruncate(fd, NOTE_SIZE + len(data))
        except OSError as err:
            raise RegistryError("cannot write the instance's environment", name=name,
                                path=str(self.instances_dir / f"{name}.lock"),
                                errno=err.errno) from err
        finally:
            if lock is None:
                os.close(fd)

    def copy_for_init(self, record: InstanceRecord, env: dict[str, str]) -> int:
        """The memfd PID 1 keeps: this record and environment, and which registry it is in."""
        with self.opened() as dir_fd:
            assert dir_fd is not None
            return record_copy(record, env, self.identity(dir_fd), str(self.instances_dir))

    def discard(self, name: str, seen: InstanceRecord | None) -> InstanceRecord | None:
        """Remove the files of a name nobody holds; returns a record recovered instead.

        ``seen`` is the record the caller read (None: it read garbage).  If the
        name's lock is still held (the instance runs: its record was garbled,
        or replaced by a stale copy), nothing is removed and the record is
        recovered from the instance's PID 1.
        """
        with self.opened() as dir_fd:
            if dir_fd is None:
                return None
            with self.locked(dir_fd):
                current = self.read(dir_fd, name)
                if seen is not None and current is not None and (
                    (current.pid, current.starttime, current.owner_pid)
                    != (seen.pid, seen.starttime, seen.owner_pid)
                ):
                    return None  # replaced meanwhile by a new instance of that name
                if seen is None and current is not None:
                    return None  # it became readable meanwhile
                lock = self.try_lock(dir_fd, name)
                if lock is None and recovery.holder_gone(self, dir_fd, name):
                    lock = self.try_lock(dir_fd, name, wait=RELEASE_WAIT)
                if lock is None:
                    return recovery.recover(self, dir_fd, name)
                try:
                    for suffix in (".json", ".lock", ".state"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(f"{name}{suffix}", dir_fd=dir_fd)
                finally:
                    if lock >= 0:
                        os.close(lock)
        return None

    def open_lock(self, dir_fd: int, name: str) -> int | None:
        """The name's lock file, opened to read or to lock (None: there is none)."""
        try:
            return os.open(f"{name}.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                           | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            return None

    def try_lock(self, dir_fd: int, name: str, *, wait: float = 0.0) -> int | None:
        """Our descriptor of the name's lock, locked (-1: there is none); None if it is held.

        ``wait``: seconds to keep trying (for a lock an ended PID 1 is letting go of).
        """
        fd = self.open_lock(dir_fd, name)
        if fd is None:
            return -1
        try:
            if _flock(fd, wait):
                return fd
        except OSError:
            os.close(fd)
            return -1
        os.close(fd)
        return None

    def held(self, dir_fd: int, name: str) -> bool:
        """Whether the name's lock is held (by a live instance or a start in progress)."""
        fd = self.try_lock(dir_fd, name)
        if fd is None:
            return True
        if fd >= 0:
            os.close(fd)
        return False

    # -- the environment and the logs --------------------------------------------------------

    def load_env(self, name: str) -> dict[str, str]:
        """The environment stored for ``name`` at start (in its lock file)."""
        path = str(self.instances_dir / f"{name}.lock")
        try:
            with self.opened() as dir_fd:
                if dir_fd is None:
                    raise FileNotFoundError(errno.ENOENT, "no registry", path)
                fd = self.open_file(dir_fd, f"{name}.lock", os.O_RDONLY,
                                    what="the instance's name lock")
            try:
                data = os.pread(fd, MAX_COPY, NOTE_SIZE)
            finally:
                os.close(fd)
            loaded = json.loads(data)
        except (OSError, ValueError) as err:
            raise RegistryError("cannot read the instance's environment", name=name,
                                path=path) from err
        if not isinstance(loaded, dict):
            raise RegistryError("malformed instance environment", name=name)
        return {str(k): str(v) for k, v in loaded.items()}

    def open_state(self, name: str, *, write: bool) -> int | None:
        """``<name>.state``: what PID 1 writes of its service (``linux.supervisor``), one
        JSON line; None if it does not exist.  For writing: created 0600 (emptied), then
        handed to PID 1.  Never through a link; only a regular file of the owner."""
        with self.opened(create=write) as dir_fd:
            if dir_fd is None:
                return None
            flags = (os.O_RDWR | os.O_CREAT | os.O_TRUNC) if write else os.O_RDONLY
            try:
                return self.open_file(dir_fd, f"{name}.state", flags,
                                      what="the instance's state file")
            except FileNotFoundError:
                return None

    def open_log(self, name: str, stream: str, *, write: bool) -> int | None:
        """A descriptor of the instance's log (``out``/``err``); None if it does not exist.

        For writing: created 0600, appended to.  Never through a link, and only
        a regular file of the owner (not a FIFO that would hang the reader).
        """
        with self.opened("logs", create=write) as dir_fd:
            if dir_fd is None:
                return None
            flags = (os.O_WRONLY | os.O_CREAT | os.O_APPEND) if write else os.O_RDONLY
            try:
                return self.open_file(dir_fd, f"{name}.{stream}", flags,
                                      what="the instance's log file", directory=self.logs_dir)
            except FileNotFoundError:
                return None
