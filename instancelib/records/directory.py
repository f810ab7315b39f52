"""``InstanceRecords``: one user's instance records and logs on this host.

The storage the public ``InstanceRegistry`` builds on, and what an
``Instance`` keeps a reference to: where the files are, the records in them
(parsed records are kept between calls: ``list()`` is a hot path), taking and
freeing names.  The files themselves, their checks and locks are
``store.RecordStore``'s.  A record whose process has ended (or whose PID now
belongs to another process: the start time differs) is removed when read,
unless its name is still held by a running instance, whose record is then
re-published from its PID 1.  This layer knows no ``Instance`` and no
cgroups: what else an ended instance leaves (its cgroup) is released by the
``on_ended`` callback the layer above passes in.
"""

from __future__ import annotations

import builtins
import fnmatch
import os
import pwd
import socket
from collections.abc import Callable
from pathlib import Path

from instancelib.errors import InvalidArgument, PermissionDenied
from instancelib.linux.userns import has_host_root
from instancelib.records import layout as layouts
from instancelib.records import recovery
from instancelib.records.record import InstanceRecord, NameLock, validate_name
from instancelib.records.store import RecordStore

__all__ = ["LAYOUTS", "InstanceRecords", "default_root"]

LAYOUTS = layouts.LAYOUTS

EndedCallback = Callable[[InstanceRecord], None]


def default_root(layout: str = "instancelib") -> Path:
    """``$INSTANCELIB_HOME``, else ``~/.instancelib`` (for ``layout="singularity"``:
    ``$SINGULARITY_CONFIGDIR`` or ``~/.singularity``; ``"apptainer"``:
    ``$APPTAINER_CONFIGDIR`` or ``~/.apptainer``)."""
    return Path(layouts.root_dir(layout))


def _lookup_user(user: str | int) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise InvalidArgument(f"no such user: {user!r}") from None


class InstanceRecords:
    """The records of one user's instances on this host.

    Args:
        root: where records and logs live; default ``$INSTANCELIB_HOME`` or
            ``~/.instancelib`` (for ``user``: that user's ``~/.instancelib``).
        user: another user's instances (name or UID).  Only root may ask, and
            must ask explicitly: nothing else ever acts on another user's
            instances.
        on_ended: called with the record of an instance found ended (its
            record has just been removed), to release what else it left.
        layout: ``"instancelib"`` (records in ``root/instances/<host>``, logs in
            ``root/logs/<host>``), or ``"singularity"``/``"apptainer"``: the root
            is that tool's configuration directory and the logs are where its
            clients read them, ``root/instances/logs/<host>/<user>/<name>.out|.err``
            (records in ``root/instances/instancelib/<host>/<user>``).

    Raises:
        PermissionDenied: ``user`` is another user and the caller is not root.
        InvalidArgument: no such user, or an unknown layout.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *,
                 user: str | int | None = None, on_ended: EndedCallback | None = None,
                 layout: str = "instancelib") -> None:
        variable, directory = layouts.check_layout(layout)
        if user is None:
            self.owner_uid = os.geteuid()
            self.root = Path(root).absolute() if root is not None else default_root(layout)
            name = layouts.user_name(self.owner_uid) if layout != "instancelib" else ""
        else:
            entry = _lookup_user(user)
            if entry.pw_uid != os.geteuid() and not has_host_root():
                raise PermissionDenied(f"only root may act on another user's instances "
                                       f"(user={user!r})")
            self.owner_uid = entry.pw_uid
            self.root = (Path(root).absolute() if root is not None
                         else Path(entry.pw_dir) / directory)
            name = entry.pw_name
        self.layout = layout
        self.host = socket.gethostname()
        self.store = RecordStore(self.root, self.owner_uid, self.host,
                                 layouts.subdirs(layout, self.host, name), variable)
        self.instances_dir = self.store.instances_dir
        self.logs_dir = self.store.logs_dir
        self._on_ended = on_ended
        # Parsed records by name, with the (inode, mtime, size) of the file they
        # came from.  A record file is never modified, only replaced (rename),
        # so an unchanged key means an unchanged record; liveness is still
        # checked on every read.
        self._parsed: dict[str, tuple[tuple[int, int, int], InstanceRecord]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, owner UID {self.owner_uid})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, InstanceRecords) and other.root == self.root
                and other.store.subdirs == self.store.subdirs)

    def __hash__(self) -> int:
        return hash((self.root, self.layout))

    # -- reading ----------------------------------------------------------------------------

    def records(self, pattern: str = "*") -> builtins.list[InstanceRecord]:
        """Records of running instances matching ``pattern`` (dead ones are pruned)."""
        found: builtins.list[InstanceRecord] = []
        with self.store.opened() as dir_fd:
            if dir_fd is None:
                return found
            match_all = pattern == "*"
            entries, locks = self.store.entries(dir_fd)
            for name, key in entries.items():
                if not match_all and not fnmatch.fnmatchcase(name, pattern):
                    continue
                cached = self._parsed.get(name)
                if cached is not None and cached[0] == key and cached[1].is_alive(self.owner_uid):
                    record: InstanceRecord | None = cached[1]
                else:
                    record = self._load(dir_fd, name)
                    if record is not None:
                        self._parsed[name] = (key, record)
                    else:
                        self._parsed.pop(name, None)
                if record is not None and record.state == "running":
                    found.append(record)
            lost = {name for name in locks - entries.keys()
                    if match_all or fnmatch.fnmatchcase(name, pattern)}
            if lost:
                found.extend(r for r in recovery.lost_locks(self.store, dir_fd, lost)
                             if r.state == "running")
        found.sort(key=lambda r: r.name)
        return found

    def running_record(self, name: str) -> InstanceRecord | None:
        """The record of the running instance ``name`` (re-published if it was lost), or None."""
        validate_name(name)
        with self.store.opened() as dir_fd:
            record = self._load(dir_fd, name) if dir_fd is not None else None
            if record is None and dir_fd is not None and self.store.held(dir_fd, name):
                record = next((r for r in recovery.lost_locks(self.store, dir_fd, {name})), None)
        return record if record is not None and record.state == "running" else None

    def name_held(self, name: str) -> bool:
        """Whether ``name`` is taken (a running instance, or a start in progress)."""
        validate_name(name)
        with self.store.opened() as dir_fd:
            return dir_fd is not None and self.store.held(dir_fd, name)

    def recover_records(self) -> builtins.list[InstanceRecord]:
        """Records re-published for running instances whose record and lock were deleted."""
        return recovery.recover_all(self.store)

    def record_path(self, name: str) -> Path:
        return self.instances_dir / f"{name}.json"

    def lock_path(self, name: str) -> Path:
        """The name's lock file (it also holds the instance's environment)."""
        return self.instances_dir / f"{name}.lock"

    def log_paths(self, name: str) -> tuple[Path, Path]:
        return self.logs_dir / f"{name}.out", self.logs_dir / f"{name}.err"

    def load_env(self, name: str) -> dict[str, str]:
        """The environment stored for ``name`` at start."""
        return self.store.load_env(name)

    def _read(self, name: str) -> InstanceRecord | None:
        """The record file's content as it is (no liveness check, no pruning)."""
        with self.store.opened() as dir_fd:
            return self.store.read(dir_fd, name) if dir_fd is not None else None

    def _write(self, record: InstanceRecord) -> None:
        """Write a record file as it is (for tests and repairs)."""
        with self.store.opened(create=True) as dir_fd:
            assert dir_fd is not None
            self.store.write_record(dir_fd, record)

    def _load(self, dir_fd: int, name: str) -> InstanceRecord | None:
        """Read a record and prune it if its instance has ended (or is not this user's)."""
        record = self.store.read(dir_fd, name)
        if record is not None and record.is_alive(self.owner_uid) and (
                record.state == "running" or self.store.held(dir_fd, name)):
            return record  # (a start holds the name's lock for as long as it runs)
        return self._prune(name, record)

    def _prune(self, name: str, record: InstanceRecord | None) -> InstanceRecord | None:
        """Remove an ended instance's files; the live record if the name is held again."""
        recovered = self.store.discard(name, record)
        if recovered is None and record is not None and record.state == "running" \
                and self._on_ended is not None:
            self._on_ended(record)
        return recovered

    # -- writing ----------------------------------------------------------------------------

    def ensure_dirs(self) -> None:
        """Create the registry's directories (0700) if needed, and check each of them."""
        self.store.ensure()

    def claim(self, record: InstanceRecord) -> NameLock:
        """Take ``record``'s name and write the record; see ``RecordStore.claim``."""
        return self.store.claim(record.name, record=record)

    def claim_name(self, name: str) -> NameLock:
        """Take a name for a start (no record yet); see ``RecordStore.claim``."""
        return self.store.claim(name)

    def publish(self, record: InstanceRecord, env: dict[str, str],
                lock: NameLock | None = None) -> None:
        """Write the running instance's record (and its environment)."""
        self.store.publish(record, env, lock)

    def remove(self, record: InstanceRecord) -> None:
        """Forget an ended instance: its files (unless the name was claimed again), then
        whatever ``on_ended`` releases."""
        self._prune(record.name, record)

    def forget(self, name: str, seen: InstanceRecord | None) -> None:
        """Remove what a failed start of ``name`` wrote (``seen``: its record, if any)."""
        self.store.discard(name, seen)
