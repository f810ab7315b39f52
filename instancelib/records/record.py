"""Instance records: the value, its JSON form, the name lock and PID 1's copy of them.

``InstanceRecord`` is what the registry stores about one instance (the
fields of Singularity's ``instance list --json`` plus ours, and a schema
version).  ``NameLock`` is a claimed name (see ``records.store``);
``record_copy`` makes the sealed in-memory copy of a record that the
instance's PID 1 keeps, from which a lost record is re-published.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from typing import Any

import attrs

from instancelib.errors import InvalidName
from instancelib.linux import procfs
from instancelib.records import layout
from instancelib.records.files import write_all

__all__ = ["COPY_NAME", "InstanceRecord", "NameLock", "lock_note", "note_lock", "record_copy",
           "validate_name"]

SCHEMA = layout.SCHEMA
COPY_NAME = "instancelib-record"   # the memfd PID 1 keeps (shows as /memfd:NAME)
_NAME = re.compile(r"[a-zA-Z0-9._-]+\Z")
MAX_COPY = 8 << 20  # a record plus an environment of up to ARG_MAX
NOTE_SIZE = 64      # a lock's note, padded (rewritten in place); the environment follows it
# A PID 1 killed before it received its lock (still in flight in its socket) lets go of
# it a moment after it is gone: the kernel drops descriptors in flight after their socket.
RELEASE_WAIT = 1.0
_SEALS = getattr(fcntl, "F_SEAL_SEAL", 1) | getattr(fcntl, "F_SEAL_SHRINK", 2) | \
    getattr(fcntl, "F_SEAL_GROW", 4) | getattr(fcntl, "F_SEAL_WRITE", 8)


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
    interfaces: list[dict[str, Any]] = attrs.field(factory=list)
    # Where this instance's lines begin in its name's logs (the files append across
    # instances of one name, as Singularity's do): {"out": bytes, "err": bytes}.
    log_offsets: dict[str, int] = attrs.field(factory=dict)

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
            "interfaces": self.interfaces,
            "logOffsets": self.log_offsets,
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
                netns=data["netns"], interfaces=_interfaces(data.get("interfaces")),
                log_offsets=_offsets(data.get("logOffsets")),
            )
        except (KeyError, TypeError, InvalidName) as err:
            raise ValueError(f"malformed record: {err}") from err


def _interfaces(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []  # a record written before networks existed
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError("interfaces must be a list of objects")
    return [dict(item) for item in value]


def _offsets(value: object) -> dict[str, int]:
    if value is None:
        return {}  # a record written before offsets were kept: the logs from their start
    if not isinstance(value, dict) or not all(
            key in ("out", "err") and isinstance(n, int) and not isinstance(n, bool) and n >= 0
            for key, n in value.items()):
        raise TypeError("logOffsets must map out/err to byte offsets")
    return {str(key): int(n) for key, n in value.items()}


def _optional_dict(value: object) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"expected an object or null, got {value!r}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


class NameLock:
    """A claimed name: the open, exclusively locked ``<name>.lock``.

    The starter passes ``fd`` to the instance's PID 1 and then closes its own
    copy; the lock lasts as long as any copy is open.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        """Let go of this copy of the lock (the name is free once no copy is open)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> NameLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A claim dropped without close() must not keep the name for the process's life.
        with contextlib.suppress(OSError, AttributeError):
            self.close()


def record_copy(record: InstanceRecord, env: dict[str, str], registry: tuple[int, int],
                instances_dir: str) -> int:
    """A sealed memfd holding the record and environment, for PID 1 to keep."""
    data = json.dumps({"record": record.to_json(), "env": env, "registry": list(registry),
                       "instancesDir": instances_dir}).encode()
    fd = os.memfd_create(COPY_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        write_all(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def note_lock(fd: int, state: str, pid: int, starttime: int) -> None:
    """Say in a name's lock who holds it: ``starting CALLER ST`` or ``running PID1 ST``.

    One small write in place (no new file): a start is told from a lost
    record without a look at any process, and a lost record's PID 1 is found
    without a scan of all of them.
    """
    data = f"{state} {pid} {starttime}\n".encode()
    os.pwrite(fd, data.ljust(NOTE_SIZE), 0)


def lock_note(fd: int) -> tuple[str, int, int] | None:
    """``(state, PID, start time)`` noted in a name's lock, or None (none, or garbled)."""
    try:
        state, pid, starttime = os.pread(fd, NOTE_SIZE, 0).split()
        return state.decode(), int(pid), int(starttime)
    except (OSError, ValueError):
        return None
