"""The per-user registry of running instances: one JSON file per instance.

Layout (``root`` is ``$INSTANCELIB_HOME`` or ``~/.instancelib``)::

    root/instances/<hostname>/<name>.json   the record (what ``instance list`` shows)
    root/instances/<hostname>/<name>.env    the instance's environment, for exec
    root/instances/<hostname>/.lock         serialises claims and prunes
    root/logs/<hostname>/<name>.out|.err    the service's output (appended)

Directories are 0700 and files 0600.  Every directory on the way is checked
on use: a symlink, a directory of another user or one others may write to
is refused, so nobody can redirect a user's (or root's) records and logs.
A registry is its owner's: records are only believed when the record, and
the live process it names, belong to that owner.  A record is written to a temporary file
and renamed into place, so a reader sees the old or the new record, never
half of one.  Records are not fsynced (DESIGN.md asks for it; this is a
deliberate departure): a record describes running processes, and no process
survives a crash of the machine, so a durable record would only describe
the dead.  A file torn by a crash is unreadable, and unreadable records are
pruned.  Skipping the three fsyncs saves about 1.4 ms per start here.

A name is claimed under the lock: if a live record holds it, the claim fails
with ``NameConflict``; exactly one of N concurrent starts of a name wins.  A
record whose process has ended (or whose PID now belongs to another process:
the start time differs) is removed when read.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import pwd
import re
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from instancelib.errors import (
    InvalidArgument,
    InvalidName,
    NameConflict,
    NotFound,
    PermissionDenied,
    RegistryError,
)
from instancelib.linux import procfs
from instancelib.linux.userns import has_host_root

if TYPE_CHECKING:
    from instancelib.instance import Instance

__all__ = ["InstanceRecord", "InstanceRegistry", "validate_name"]

SCHEMA = 1
_NAME = re.compile(r"[a-zA-Z0-9._-]+\Z")
_MAX_RECORD = 1 << 20
_READ_CHUNK = 1 << 16  # below malloc's mmap threshold: records are read a thousand at a time


def validate_name(name: object) -> str:
    """Check an instance name against Singularity's rule; return it.

    Raises:
        InvalidName: not a string of ``[a-zA-Z0-9._-]``, empty, ``.``/``..``,
            or longer than 128 characters.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..") or len(name) > 128:
        raise InvalidName(
            f"instance name must match [a-zA-Z0-9._-]+ (not '.' or '..', at most 128 "
            f"characters); got {name!r}"
        )
    return name


@attrs.frozen(kw_only=True)
class InstanceRecord:
    """What the registry stores about one instance.

    ``state`` is ``"starting"`` while ``Instance.start`` runs (the name is
    claimed; ``owner_pid``/``owner_starttime`` identify the starting process)
    and ``"running"`` once PID 1 is up (``pid``/``starttime`` identify it).
    """

    name: str
    state: str
    pid: int = 0
    starttime: int = 0
    owner_pid: int = 0
    owner_starttime: int = 0
    image: str = ""
    image_kind: str = "sandbox"
    ip: str = ""
    log_out: str = ""
    log_err: str = ""
    started_at: float = 0.0
    uid: int = -1
    user: str = ""
    cwd: str = "/"
    service_pid: int = 0
    service_starttime: int = 0
    options: dict[str, Any] = attrs.field(factory=dict)
    namespaces: int = 0
    loop: str | None = None
    cgroup: dict[str, Any] | None = None
    netns: str | None = None

    def __attrs_post_init__(self) -> None:
        # One check for all fields (not one validator each): records are
        # built a thousand at a time by list().
        validate_name(self.name)
        if self.state not in ("starting", "running"):
            raise ValueError(f"state must be 'starting' or 'running' (got {self.state!r})")
        for value in (self.pid, self.starttime, self.owner_pid, self.owner_starttime):
            if type(value) is not int or value < 0:
                raise ValueError(f"PIDs and start times must be integers >= 0 (got {value!r})")

    def is_alive(self, uid: int | None = None) -> bool:
        """Whether the process this record stands for is still running (PID-reuse safe).

        With ``uid``, the record and the process must also belong to that user.
        """
        if uid is not None and self.uid != uid:
            return False
        if self.state == "starting":
            return procfs.is_alive(self.owner_pid, self.owner_starttime, uid=uid)
        return procfs.is_alive(self.pid, self.starttime, uid=uid, init=True)

    def to_json(self) -> dict[str, Any]:
        """The on-disk form: Singularity's field names first, then ours."""
        return {
            "instance": self.name,
            "pid": self.pid,
            "img": self.image,
            "ip": self.ip,
            "logErrPath": self.log_err,
            "logOutPath": self.log_out,
            "schema": SCHEMA,
            "state": self.state,
            "starttime": self.starttime,
            "ownerPid": self.owner_pid,
            "ownerStarttime": self.owner_starttime,
            "imageKind": self.image_kind,
            "startedAt": self.started_at,
            "uid": self.uid,
            "user": self.user,
            "cwd": self.cwd,
            "servicePid": self.service_pid,
            "serviceStarttime": self.service_starttime,
            "options": self.options,
            "namespaces": self.namespaces,
            "loop": self.loop,
            "cgroup": self.cgroup,
            "netns": self.netns,
        }

    @classmethod
    def from_json(cls, data: object) -> InstanceRecord:
        """Parse an on-disk record; any malformation raises ``ValueError``."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError("not an instancelib record of a known schema")
        try:
            return cls(
                name=data["instance"], state=data["state"], pid=data["pid"],
                starttime=data["starttime"], owner_pid=data["ownerPid"],
                owner_starttime=data["ownerStarttime"], image=str(data["img"]),
                image_kind=str(data["imageKind"]), ip=str(data["ip"]),
                log_out=str(data["logOutPath"]), log_err=str(data["logErrPath"]),
                started_at=float(data["startedAt"]), uid=_int(data["uid"]),
                user=str(data["user"]), cwd=str(data["cwd"]),
                service_pid=_int(data["servicePid"]),
                service_starttime=_int(data["serviceStarttime"]),
                options=dict(data["options"]), namespaces=_int(data["namespaces"]),
                loop=data["loop"], cgroup=_optional_dict(data["cgroup"]),
                netns=data["netns"],
            )
        except (KeyError, TypeError, InvalidName) as err:
            raise ValueError(f"malformed record: {err}") from err


def _optional_dict(value: object) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"expected an object or null, got {value!r}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


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
        self.instances_dir = self.root / "instances" / self.host
        self.logs_dir = self.root / "logs" / self.host
        self._records_prefix = f"{self.instances_dir}/"  # str paths: list() is a hot path
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
        record = self._load(name) if self._readable() else None
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

    # -- records ----------------------------------------------------------------------------

    def records(self, pattern: str = "*") -> builtins.list[InstanceRecord]:
        """Records of running instances matching ``pattern`` (dead ones are pruned)."""
        found: builtins.list[InstanceRecord] = []
        if not self._readable():
            return found
        match_all = pattern == "*"
        for name, key in self._entries():
            if not match_all and not fnmatch.fnmatchcase(name, pattern):
                continue
            cached = self._parsed.get(name)
            if cached is not None and cached[0] == key and cached[1].is_alive(self.owner_uid):
                record: InstanceRecord | None = cached[1]
            else:
                record = self._load(name)
                if record is not None:
                    self._parsed[name] = (key, record)
                else:
                    self._parsed.pop(name, None)
            if record is not None and record.state == "running":
                found.append(record)
        found.sort(key=lambda r: r.name)
        return found

    def _entries(self) -> Iterator[tuple[str, tuple[int, int, int]]]:
        """(name, (inode, mtime_ns, size)) of every record file."""
        try:
            entries = os.scandir(self.instances_dir)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                # Temporary files end in ".tmp" and the lock is ".lock": only
                # records end in ".json" (names may start with a dot).
                if entry.name.endswith(".json"):
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield entry.name[:-5], (info.st_ino, info.st_mtime_ns, info.st_size)

    def record_path(self, name: str) -> Path:
        return self.instances_dir / f"{name}.json"

    def env_path(self, name: str) -> Path:
        return self.instances_dir / f"{name}.env"

    def log_paths(self, name: str) -> tuple[Path, Path]:
        return self.logs_dir / f"{name}.out", self.logs_dir / f"{name}.err"

    def _read(self, name: str) -> InstanceRecord | None:
        """Read a record; ``None`` if absent.  An unreadable record counts as absent."""
        try:
            fd = os.open(f"{self._records_prefix}{name}.json",
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno == errno.ELOOP:
                return None
            raise RegistryError("cannot read an instance record", name=name,
                                path=str(self.record_path(name)), errno=err.errno) from err
        try:
            data = os.read(fd, _READ_CHUNK)
            while len(data) <= _MAX_RECORD and len(data) % _READ_CHUNK == 0:
                more = os.read(fd, _READ_CHUNK)
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
        try:
            if not data or len(data) > _MAX_RECORD:
                raise ValueError("empty or too large")
            record = InstanceRecord.from_json(json.loads(data))
        except ValueError:
            return None
        return record if record.name == name else None

    def _load(self, name: str) -> InstanceRecord | None:
        """Read a record and prune it if its instance has ended (or is not this user's)."""
        record = self._read(name)
        if record is None:
            if os.path.lexists(f"{self._records_prefix}{name}.json"):
                self._prune(name, None)  # garbage: remove it
            return None
        if record.is_alive(self.owner_uid):
            return record
        self._prune(name, record)
        if record.cgroup is not None and record.state == "running" and (
                record.uid == os.geteuid() or has_host_root()):
            # Its PID 1 ended without a stop (killed from outside): its cgroup goes too.
            from instancelib.cgroups import tree  # noqa: PLC0415 (rarely needed)

            info = tree.CgroupInfo.from_dict(record.cgroup)
            if info is not None:
                tree.remove(info, wait=0.5)
        return None

    # -- directories ------------------------------------------------------------------------

    def _check_dir(self, path: Path) -> bool:
        """True for a plain directory of the owner, False if absent; raise for anything else."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(info.st_mode):
            raise RegistryError("refusing a registry directory that is a symlink", path=str(path))
        if not stat.S_ISDIR(info.st_mode):
            raise RegistryError("the registry path is not a directory", path=str(path))
        if info.st_uid != self.owner_uid:
            raise PermissionDenied(f"the registry directory belongs to UID {info.st_uid}, not "
                                   f"UID {self.owner_uid}", path=str(path))
        if info.st_mode & 0o022:
            raise RegistryError(f"the registry directory is writable by others "
                                f"(mode {stat.S_IMODE(info.st_mode):o})", path=str(path))
        return True

    def _readable(self) -> bool:
        """Check the records' directories; False when they do not exist (no instances)."""
        return all(self._check_dir(d) for d in
                   (self.root, self.root / "instances", self.instances_dir))

    # -- writing ----------------------------------------------------------------------------

    def ensure_dirs(self) -> None:
        """Create the registry's directories (0700) if needed, and check each of them."""
        try:
            self.root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise RegistryError("cannot create the registry directory",
                                path=str(self.root.parent), errno=err.errno) from err
        for directory in (self.root, self.root / "instances", self.instances_dir,
                          self.root / "logs", self.logs_dir):
            if self._check_dir(directory):
                continue
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError:
                pass
            except OSError as err:
                raise RegistryError("cannot create the registry directory",
                                    path=str(directory), errno=err.errno) from err
            self._check_dir(directory)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.instances_dir / ".lock",
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def claim(self, record: InstanceRecord) -> None:
        """Write ``record`` (state "starting") if no live instance holds its name.

        Raises:
            NameConflict: a running or starting instance has the name.
        """
        self.ensure_dirs()
        with self._locked():
            existing = self._read(record.name)
            if existing is not None and existing.is_alive(self.owner_uid):
                what = "is already running" if existing.state == "running" else (
                    f"is being started by process {existing.owner_pid}")
                raise NameConflict(f"an instance named {record.name!r} {what}",
                                   name=record.name, pid=existing.pid or existing.owner_pid)
            self._write(record)

    def publish(self, record: InstanceRecord, env: dict[str, str]) -> None:
        """Replace the claim with the running instance's record (and its environment)."""
        self._write_file(self.env_path(record.name), json.dumps(env).encode())
        self._write(record)

    def _write(self, record: InstanceRecord) -> None:
        self._write_file(self.record_path(record.name), json.dumps(record.to_json()).encode())

    def _write_file(self, path: Path, data: bytes) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, path)

    def remove(self, record: InstanceRecord) -> None:
        """Remove ``record``'s files, unless the name was claimed again by someone else."""
        self._prune(record.name, record)

    def _prune(self, name: str, seen: InstanceRecord | None) -> None:
        with contextlib.suppress(FileNotFoundError), self._locked():
            current = self._read(name)
            if seen is not None and current is not None and (
                (current.pid, current.starttime, current.owner_pid)
                != (seen.pid, seen.starttime, seen.owner_pid)
            ):
                return  # replaced meanwhile by a new instance of that name
            if seen is None and current is not None:
                return  # it became readable meanwhile
            for path in (self.record_path(name), self.env_path(name)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def load_env(self, name: str) -> dict[str, str]:
        """The environment stored for ``name`` at start."""
        try:
            data = json.loads(self.env_path(name).read_bytes())
        except (OSError, ValueError) as err:
            raise RegistryError("cannot read the instance's environment", name=name,
                                path=str(self.env_path(name))) from err
        if not isinstance(data, dict):
            raise RegistryError("malformed instance environment", name=name)
        return {str(k): str(v) for k, v in data.items()}
