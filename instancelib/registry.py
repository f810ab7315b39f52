"""``InstanceRegistry``: the public list/get/stop over one user's records on this host.

The files, their checks, locks and recovery are ``recordstore.RecordStore``'s;
this layer turns records into live ``Instance`` objects, keeps parsed records
between calls (``list()`` is a hot path) and removes the cgroup of an
instance found dead.  A record whose process has ended (or whose PID now
belongs to another process: the start time differs) is removed when read,
unless its name is still held by a running instance, whose record is then
re-published from its PID 1.
"""

from __future__ import annotations

import builtins
import fnmatch
import os
import pwd
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from instancelib import recovery
from instancelib.errors import InvalidArgument, NotFound, PermissionDenied
from instancelib.linux.userns import has_host_root
from instancelib.records import InstanceRecord, NameLock, validate_name
from instancelib.recordstore import RecordStore

if TYPE_CHECKING:
    from instancelib.instance import Instance

__all__ = ["InstanceRecord", "InstanceRegistry", "validate_name"]


def default_root() -> Path:
    """``$INSTANCELIB_HOME``, else ``~/.instancelib``."""
    configured = os.environ.get("INSTANCELIB_HOME")
    if configured:
        return Path(configured).absolute()
    return Path.home() / ".instancelib"


def _lookup_user(user: str | int) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise InvalidArgument(f"no such user: {user!r}") from None


class InstanceRegistry:
    """The running instances of one user on this host.

    Args:
        root: where records and logs live; default ``$INSTANCELIB_HOME`` or
            ``~/.instancelib`` (for ``user``: that user's ``~/.instancelib``).
        user: another user's instances (name or UID).  Only root may ask, and
            must ask explicitly: nothing else ever acts on another user's
            instances.

    Reading (``list``, ``get``) never blocks on other processes; a record
    whose instance has ended is removed as it is read.

    Raises:
        PermissionDenied: ``user`` is another user and the caller is not root.
        InvalidArgument: no such user.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *,
                 user: str | int | None = None) -> None:
        if user is None:
            self.owner_uid = os.geteuid()
            self.root = Path(root).absolute() if root is not None else default_root()
        else:
            entry = _lookup_user(user)
            if entry.pw_uid != os.geteuid() and not has_host_root():
                raise PermissionDenied(f"only root may act on another user's instances "
                                       f"(user={user!r})")
            self.owner_uid = entry.pw_uid
            self.root = (Path(root).absolute() if root is not None
                         else Path(entry.pw_dir) / ".instancelib")
        self.host = socket.gethostname()
        self.store = RecordStore(self.root, self.owner_uid, self.host)
        self.instances_dir = self.store.instances_dir
        self.logs_dir = self.store.logs_dir
        # Parsed records by name, with the (inode, mtime, size) of the file they
        # came from.  A record file is never modified, only replaced (rename),
        # so an unchanged key means an unchanged record; liveness is still
        # checked on every read.
        self._parsed: dict[str, tuple[tuple[int, int, int], InstanceRecord]] = {}

    def __repr__(self) -> str:
        return f"InstanceRegistry({str(self.root)!r}, owner UID {self.owner_uid})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceRegistry) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # -- public API -----------------------------------------------------------------------

    def list(self, pattern: str = "*") -> builtins.list[Instance]:
        """Running instances whose names match the glob ``pattern``, sorted by name."""
        from instancelib.instance import Instance  # noqa: PLC0415 (instance imports registry)

        return [Instance._from_record(record, self) for record in self.records(pattern)]

    def get(self, name: str) -> Instance:
        """The running instance called ``name``.

        Raises:
            InvalidName: ``name`` breaks the naming rule.
            NotFound: no running instance has that name.
        """
        from instancelib.instance import Instance  # noqa: PLC0415 (instance imports registry)

        validate_name(name)
        with self.store.opened() as dir_fd:
            record = self._load(dir_fd, name) if dir_fd is not None else None
            if record is None and dir_fd is not None and self.store.held(dir_fd, name):
                record = next((r for r in recovery.lost_locks(self.store, dir_fd, {name})), None)
        if record is None or record.state != "running":
            raise NotFound(f"no instance named {name!r} is running", name=name)
        return Instance._from_record(record, self)

    def stop(self, pattern: str = "*", *, signal: int = signal.SIGINT, timeout: float = 10.0,
             force: bool = False) -> builtins.list[str]:
        """Stop every running instance matching ``pattern``; return their names.

        The signal goes to all of them first, then they are waited for
        together, so N instances take one grace period, not N.
        """
        from instancelib.instance import stop_instances  # noqa: PLC0415 (import cycle)

        instances = self.list(pattern)
        stop_instances(instances, signal=signal, timeout=timeout, force=force)
        return [instance.name for instance in instances]

    def recover(self) -> builtins.list[Instance]:
        """Find this registry's running instances whose records were lost; list them again.

        Records that are torn, garbled or deleted are re-published from their
        instances' PID 1s whenever they are read (their names stay claimed
        meanwhile); this finds the instances whose record *and* name lock
        were deleted, by a scan of this user's processes (slower: for
        repairs, ``instance list --recover``).  Returns the instances recovered.
        """
        from instancelib.instance import Instance  # noqa: PLC0415 (instance imports registry)

        return [Instance._from_record(record, self) for record in recovery.recover_all(self.store)]

    # -- records ----------------------------------------------------------------------------

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

    def record_path(self, name: str) -> Path:
        return self.instances_dir / f"{name}.json"

    def lock_path(self, name: str) -> Path:
        """The name's lock file (it also holds the instance's environment)."""
        return self.instances_dir / f"{name}.lock"

    def log_paths(self, name: str) -> tuple[Path, Path]:
        return self.logs_dir / f"{name}.out", self.logs_dir / f"{name}.err"

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
        recovered = self.store.discard(name, record)
        if recovered is not None:
            return recovered
        if record is not None and record.cgroup is not None and record.state == "running" and (
                record.uid == os.geteuid() or has_host_root()):
            # Its PID 1 ended without a stop (killed from outside): its cgroup goes too.
            from instancelib.cgroups import control  # noqa: PLC0415 (rarely needed)

            control.remove_dead(record.cgroup, record.uid)
        return None

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
        """Remove ``record``'s files, unless the name was claimed again by someone else."""
        self.store.discard(record.name, record)

    def forget(self, name: str, seen: InstanceRecord | None) -> None:
        """Remove what a failed start of ``name`` wrote (``seen``: its record, if any)."""
        self.store.discard(name, seen)

    def load_env(self, name: str) -> dict[str, str]:
        """The environment stored for ``name`` at start."""
        return self.store.load_env(name)
