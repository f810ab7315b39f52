"""``Instance``: a container image running as a named background service."""

from __future__ import annotations

import datetime
import enum
import logging
import os
import signal as signals
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from instancelib import display
from instancelib.binds import Bind
from instancelib.cgroups import control as cgroup_control
from instancelib.cgroups.limits import Limits
from instancelib.durations import optional_seconds
from instancelib.environment import check_args, check_argv, check_env, check_exec_size
from instancelib.errors import (
    ExecError,
    NotFound,
    PermissionDenied,
    Timeout,
)
from instancelib.healthcheck import HealthCheck
from instancelib.image import Image
from instancelib.linux import envscripts, pathwalk, procfs, syscalls
from instancelib.linux.userns import has_host_root
from instancelib.logs import read_lines
from instancelib.network.args import PortMap
from instancelib.options import StartOptions
from instancelib.process import (
    ExecResult,
    InstanceProcess,
    Stdio,
    check_signal,
    spawn,
)
from instancelib.readiness import ReadySpec
from instancelib.records.directory import InstanceRecords
from instancelib.records.record import InstanceRecord, validate_name
from instancelib.starting import start_instance
from instancelib.stopping import stop_instances
from instancelib.supervision import Supervised
from instancelib.usage import ResourceUse

__all__ = ["Instance", "InstanceStatus"]

log = logging.getLogger("instancelib")

_RUNSCRIPT = "/.singularity.d/runscript"


class InstanceStatus(enum.Enum):
    """Where an instance is in its life."""

    RUNNING = "running"
    """PID 1 is up (the service may have exited: the instance then idles)."""
    STOPPED = "stopped"
    """PID 1 has exited; nothing of the instance runs."""


class _NoPublicConstructor(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "Instance has no public constructor: start one with Instance.start(image, name) "
            "or look one up with InstanceRecords().get(name)"
        )


class Instance(ResourceUse, Supervised, metaclass=_NoPublicConstructor):
    """A named instance of a container image, running in the background.

    Obtained from ``Instance.start`` or ``InstanceRecords.get``/``list``.
    State is read live: ``is_running()`` and ``status`` look at the process,
    never at a cached flag.  Methods that signal or enter the instance first
    check that its PID still belongs to its PID 1 (PID + start time), so a
    reused PID is never acted on.

    Attributes:
        name: the instance's name (unique per user and host).
        pid: the host PID of the instance's PID 1.
        image: the image it was started from.
        registry: the records it is kept in: the ``InstanceRegistry`` it came
            from or was started with (the user's default records otherwise).
    """

    name: str
    pid: int
    image: Image
    registry: InstanceRecords
    _record: InstanceRecord
    _env: dict[str, str] | None

    @classmethod
    def _from_record(cls, record: InstanceRecord, registry: InstanceRecords) -> Instance:
        instance = object.__new__(cls)
        instance._record = record
        instance.name = record.name
        instance.pid = record.pid
        instance.image = Image._from_record(record.image, record.image_kind)
        instance.registry = registry
        instance._env = None
        instance._last_sample = None
        return instance

    # -- start ------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        image: Image | str | os.PathLike[str],
        name: str,
        *,
        args: Sequence[str] = (),
        run: bool = False,
        writable_tmpfs: bool = False,
        binds: Sequence[str | Bind] | str = (),
        env: Mapping[str, str] | None = None,
        cleanenv: bool = False,
        contain: bool = False,
        hostname: str | None = None,
        pid_file: str | os.PathLike[str] | None = None,
        registry: InstanceRecords | None = None,
        ready: ReadySpec | None = None,
        timeout: float = 30.0,
        fakeroot: bool = False,
        limits: Limits | None = None,
        network: str | Sequence[str] | None = None,
        network_args: str | PortMap | Sequence[str | PortMap] = (),
        dns: str | Sequence[str] | None = None,
        service: bool = True,
        end_with_caller: bool = False,
        cgroup_parent: str = "instancelib",
        exist_ok: bool = False,
        restart: str = "no",
        health: HealthCheck | Sequence[Any] | None = None,
    ) -> Instance:
        """Start ``image`` as the background instance ``name``.

        Returns once the start script (``run=False``; the instance idles if the
        image has none) or the run script (``run=True``) has been exec'd inside
        new mount, PID, UTS and IPC namespaces, and, with ``ready``, once the
        service answers.

        Args:
            image: an ``Image`` or a path to one.
            name: the instance name, ``[a-zA-Z0-9._-]+``.
            args: arguments for the start/run script.
            run: run ``/.singularity.d/runscript`` (Singularity's ``instance run``).
            writable_tmpfs: writable root (overlay on a tmpfs, discarded at stop);
                otherwise the root is read-only.
            binds: ``"src[:dst[:ro|rw]]"`` strings (comma-separated lists allowed)
                or ``Bind`` objects.
            env: variables set after the image's ``/.singularity.d/env/*.sh``;
                ``APPEND_PATH``/``PREPEND_PATH`` extend ``PATH``.
            cleanenv: do not pass the host environment in.
            contain: private ``$HOME``, ``/tmp``, ``/var/tmp`` and a minimal ``/dev``.
            hostname: the hostname inside.
            pid_file: write the host PID of PID 1 here (for systemd ``Type=forking``).
            registry: where to record the instance (default: the user's).
            ready: a readiness probe (see ``instancelib.readiness``).
            timeout: seconds for the whole start, readiness included.
            fakeroot: for an ordinary user, be root inside (with the user's
                /etc/subuid range mapped too when there is one); root is
                already root.
            limits: resource limits (``Limits``), enforced through the
                instance's cgroup.  Root's instances always get a cgroup (for
                ``stats``, ``pause`` and a complete ``stop``); an ordinary
                user's get one inside a cgroup v2 subtree delegated to them.
            network: ``None``, the host's network (Singularity's default);
                ``"none"``, a network namespace of its own with only ``lo``;
                or the names of networks to join (``"bridge"``, ``"ptp"``, or
                one defined in ``$INSTANCELIB_NETWORK_DIR``).
            network_args: Apptainer's ``[NETWORK:]KEY=VALUE;...`` strings
                (``portmap=8080:80/tcp``, ``IP=10.22.0.5``) or ``PortMap`` objects.
            dns: DNS servers: the instance's ``/etc/resolv.conf`` names only them.
            service: ``False``: run neither script; the instance idles until it is
                stopped (what ``Image.exec`` runs its command in).
            end_with_caller: end the instance (SIGKILL to all of it) as soon as
                the process that started it ends, also when that process is
                killed: nothing of a notebook's or a foreground command's
                instance outlives it.
            cgroup_parent: where the instance's cgroup goes: ``"instancelib"``
                (the default), instancelib's own tree, so that the instance
                outlives whatever started it; ``"caller"``, a child of the
                caller's own cgroup (``<cgroup>/instancelib/...``), so that a
                systemd unit's or a batch job's accounting, limits and stop
                cover it (on cgroup v2 the caller's processes may move into
                ``<cgroup>/supervisor``: see ``instancelib.cgroups.caller``).
            restart: what PID 1 does when the service (the start or run script)
                exits: ``"no"`` (stay up, idle: Singularity's way), ``"on-failure"``
                (start it again after a non-zero exit or a death by signal;
                ``"on-failure:N"``: at most N times) or ``"always"``.  A stop never
                restarts it; the wait is docker's (100 ms doubling to 1 min, reset
                after 10 s of running).  See ``restarts`` and ``service_state``.
            health: a check PID 1 runs inside, every ``interval`` (``HealthCheck``, or
                its test: a command list, ``("tcp", port)``, ``("http", port, "/path")``);
                see ``health`` and ``wait_healthy``, and ``ready="health"``.
            exist_ok: when an instance of that name runs with the same image and
                options (those ``Instance.options`` shows, and the same ``env``),
                return it instead of raising ``NameConflict`` (a workflow engine
                retrying a task); one that differs raises ``NameConflict``
                naming what differs; one being started by another process is
                waited for (within ``timeout``).

        Raises:
            InvalidName, InvalidArgument: bad name or option.
            ImageError: the image cannot be used.
            NameConflict: an instance of that name is running or starting (with
                ``exist_ok``: one with other settings).
            PermissionDenied: ``registry`` is another user's.
            Unsupported: the kernel or the administrator forbids what is needed
                (unprivileged user namespaces; the message names the setting),
                or no cgroup hierarchy here can enforce one of ``limits``.
            StartError: set-up or exec failed (``StartTimeout`` if out of time);
                nothing of the instance is left behind.
        """
        validate_name(name)
        options = StartOptions(
            args=args, run=run, writable_tmpfs=writable_tmpfs, binds=binds, env=env,
            cleanenv=cleanenv, contain=contain, hostname=hostname, pid_file=pid_file,
            ready=ready, timeout=timeout, fakeroot=fakeroot, limits=limits, network=network,
            network_args=network_args, dns=dns, service=service,
            end_with_caller=end_with_caller, cgroup_parent=cgroup_parent, restart=restart,
            health=health)
        return start_instance(image, name, options, registry=registry, make=cls._started,
                              exist_ok=exist_ok)

    @classmethod
    def _started(cls, record: InstanceRecord, registry: InstanceRecords,
                 env: dict[str, str] | None) -> Instance:
        instance = cls._from_record(record, registry)
        instance._env = env
        return instance

    # -- state ------------------------------------------------------------------------------

    @property
    def started_at(self) -> datetime.datetime:
        """When the instance was started (timezone-aware, UTC)."""
        return datetime.datetime.fromtimestamp(self._record.started_at, datetime.timezone.utc)

    @property
    def stdout_path(self) -> Path:
        """The log file holding the service's standard output."""
        # Derived from the registry, never read from the record: a record
        # pointing at another file must not make us read (or follow) it.
        return self.registry.log_paths(self.name)[0]

    @property
    def stderr_path(self) -> Path:
        """The log file holding the service's standard error."""
        return self.registry.log_paths(self.name)[1]

    @property
    def record(self) -> InstanceRecord:
        """The record published when the instance started (what ``instance list`` shows)."""
        return self._record

    @property
    def ip(self) -> str:
        """The instance's IP address ("" when it shares the host's network)."""
        return self._record.ip

    @property
    def options(self) -> dict[str, Any]:
        """The start options (run, args, writable_tmpfs, contain, hostname, binds)."""
        return dict(self._record.options)

    def is_running(self) -> bool:
        """Whether PID 1 is still up (and its PID was not reused by another process)."""
        return procfs.is_alive(self.pid, self._record.starttime, uid=self._record.uid, init=True)

    @property
    def status(self) -> InstanceStatus:
        """``RUNNING`` or ``STOPPED``, read live."""
        return InstanceStatus.RUNNING if self.is_running() else InstanceStatus.STOPPED

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.is_running() else "stopped"
        return f"<Instance {self.name!r} of {self.image.path!r}: {state}>"

    def rows(self) -> list[tuple[str, str]]:
        """What a notebook shows of the instance (read live), field by field."""
        running = self.is_running()
        limits = self._record.options.get("limits") or {}
        return [
            ("name", self.name),
            ("status", ("paused" if self.paused else "running") if running else "stopped"),
            ("image", self.image.path),
            ("PID", str(self.pid) if running else "-"),
            ("IP", self.ip or "host network"),
            ("uptime", display.duration(time.time() - self._record.started_at)
             if running else "-"),
            ("started", display.timestamp(self._record.started_at)),
            ("limits", ", ".join(f"{key}={value}" for key, value in sorted(limits.items()))
             or "none"),
            *self._service_rows(),
        ]

    def _repr_html_(self) -> str:
        return display.key_values(f"Instance {self.name}", self.rows())

    def _repr_pretty_(self, printer: display.Printer, cycle: bool) -> None:
        display.pretty_key_values(printer, cycle, f"Instance {self.name}", self.rows())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return (self.name, self.pid, self._record.starttime, self.registry) == (
            other.name, other.pid, other._record.starttime, other.registry)

    def __hash__(self) -> int:
        return hash((self.name, self.pid, self._record.starttime))

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Instance:
        """``async with Instance.start(...)`` works too (the start itself ran before;
        ``instancelib.aio.AsyncInstance`` starts without blocking the loop)."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        import asyncio  # noqa: PLC0415 (only an event loop's caller pays for it)

        await asyncio.to_thread(self.stop)

    # -- running commands -------------------------------------------------------------------

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        text: bool = False,
        tty: bool = False,
    ) -> InstanceProcess:
        """Start ``argv`` inside the instance and return at once, like ``subprocess.Popen``.

        ``stdin``/``stdout``/``stderr`` take ``None`` (inherit this process's),
        ``subprocess.PIPE``, ``subprocess.DEVNULL``, ``subprocess.STDOUT`` (for
        stderr), a file descriptor or a file object.  The command gets the
        instance's environment (as its start script did) plus ``env``, and
        runs in ``cwd`` (default: the start script's directory).  ``tty=True``
        makes it a session leader with stdin as its controlling terminal.

        Raises:
            NotFound: the instance is not running.
            ExecError: the command cannot be started (not found, not executable,
                the instance is paused).
        """
        command = check_argv(argv)
        self._check_owner()
        if not self.is_running():
            raise NotFound("the instance is not running", name=self.name)
        environment = envscripts.apply_overrides(self._environment(), check_env(env))
        check_exec_size(command, environment)
        cgroup = self._live_cgroup()
        if cgroup_control.is_frozen(cgroup):
            # The command would join the frozen cgroup and hang there (docker refuses too).
            raise ExecError("the instance is paused: resume() it first", name=self.name)
        request = {"op": "exec", "pid": self.pid, "starttime": self._record.starttime,
                   "uid": self._record.uid, "namespaces": self._record.namespaces,
                   "cgroup_procs": cgroup.procs_files(), "cwd": cwd or self._record.cwd,
                   "argv": command, "env": environment, "tty": bool(tty)}
        return spawn(request, Stdio(stdin, stdout, stderr, text), self.name)

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        input: bytes | str | None = None,
        timeout: float | None = None,
        text: bool = True,
    ) -> ExecResult:
        """Run ``argv`` inside the instance to completion and capture its output.

        Args:
            input: data for its standard input (else it reads /dev/null).
            timeout: seconds; the command is killed when they run out.
            text: decode the output as UTF-8 (``str``); ``False`` gives ``bytes``.

        Raises:
            NotFound: the instance is not running.
            ExecError: the command cannot be started.
            Timeout: the command ran longer than ``timeout`` (it has been killed).

        Interrupted by any exception (``KeyboardInterrupt`` included), the
        command is killed and reaped before the exception propagates.
        """
        timeout = optional_seconds(timeout, "timeout")
        process = self.popen_captured(argv, env=env, cwd=cwd, with_input=input is not None)
        # Timed out, interrupted (Ctrl-C in a cell), cancelled: as subprocess.run, the
        # command is killed and reaped before the exception goes on.
        out, err = process.finish(input, timeout)
        if text:
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        return ExecResult(process.returncode if process.returncode is not None else -1, out, err)

    def popen_captured(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                       cwd: str | None = None, with_input: bool = False) -> InstanceProcess:
        """``popen`` with stdout and stderr captured (and stdin a pipe ``with_input``, else
        /dev/null): what ``exec`` runs."""
        return self.popen(argv, stdin=subprocess.PIPE if with_input else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)

    def run_command(self, args: Sequence[str] = ()) -> list[str]:
        """The command line ``run()`` executes: the image's runscript with ``args``.

        As Singularity: the runscript if present (through ``/bin/sh`` unless
        executable), otherwise ``/bin/sh`` with ``args``.
        """
        root = f"/proc/{self.pid}/root"
        try:
            canonical, exists = pathwalk.resolve_in_root(root, _RUNSCRIPT)
        except OSError:
            exists = False
        if not exists:
            return ["/bin/sh", *args]
        if os.access(root + canonical, os.X_OK):
            return [_RUNSCRIPT, *args]
        return ["/bin/sh", _RUNSCRIPT, *args]

    def run(
        self,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        input: bytes | str | None = None,
        timeout: float | None = None,
        text: bool = True,
    ) -> ExecResult:
        """Run the image's runscript inside the instance (``run instance://NAME``)."""
        return self.exec(self.run_command(check_args(args)), env=env, input=input,
                         timeout=timeout, text=text)

    def _environment(self) -> dict[str, str]:
        if self._env is None:
            self._env = self.registry.load_env(self.name)
        return self._env

    # -- signals and stopping ---------------------------------------------------------------

    def kill(self, signal: int = signals.SIGKILL) -> None:
        """Send ``signal`` to the instance's PID 1.

        PID 1 forwards SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT and SIGWINCH to the
        service's process group; SIGINT and SIGTERM to every process of the
        instance, exiting once they are gone; SIGKILL ends the instance at once.

        Raises:
            NotFound: the instance is not running.
        """
        pidfd = self._pidfd()
        try:
            syscalls.pidfd_send_signal(pidfd, check_signal(signal))
        except PermissionError as err:
            raise PermissionDenied("not allowed to signal the instance", name=self.name,
                                   errno=err.errno) from err
        finally:
            os.close(pidfd)

    def stop(self, *, signal: int = signals.SIGINT, timeout: float = 10.0,
             force: bool = False) -> None:
        """Stop the instance and wait until nothing of it is left.

        Sends ``signal`` (SIGKILL if ``force``) to PID 1, which passes it to
        every process of the instance; after ``timeout`` seconds whatever
        remains is killed.  Returns once PID 1 has exited, which the kernel
        only allows after every process in the instance is gone, and the
        instance's record is removed.  Stopping a stopped instance does nothing.
        """
        stop_instances([self], signal=signal, timeout=timeout, force=force)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the instance ends.

        Raises:
            Timeout: it is still running after ``timeout`` seconds.
        """
        timeout = optional_seconds(timeout, "timeout")
        try:
            pidfd = self._pidfd()
        except NotFound:
            self._forget()
            return
        try:
            if not procfs.wait_pidfd(pidfd, timeout):
                raise Timeout(f"still running after {timeout:g} s", name=self.name,
                              pid=self.pid)
        finally:
            os.close(pidfd)
        self._forget()

    def _check_owner(self) -> None:
        """Only the owner (or root, who asked for this user's registry) may act."""
        if self._record.uid != os.geteuid() and not has_host_root():
            raise PermissionDenied(f"the instance belongs to UID {self._record.uid}",
                                   name=self.name)

    def _pidfd(self) -> int:
        """A pidfd of PID 1, after checking start time, owner and that it is an instance's init."""
        self._check_owner()
        try:
            return procfs.open_verified_pidfd(self.pid, self._record.starttime,
                                              uid=self._record.uid, init=True)
        except ProcessLookupError:
            raise NotFound("the instance is not running", name=self.name,
                           pid=self.pid) from None

    def _forget(self) -> None:
        """Drop the record of an instance that has ended, and its cgroup."""
        self.registry.remove(self._record)

    # -- logs -------------------------------------------------------------------------------

    def logs(self, *, stderr: bool = False, follow: bool = False,
             tail: int | None = None, all: bool = False) -> Iterator[str]:
        """The service's output, line by line (without line ends).

        The log files of a name are appended to by every instance that has had
        the name (as Singularity's are); this reads from this instance's own
        first line.

        Args:
            stderr: read the error log instead of the output log.
            follow: keep reading new lines until the instance ends.
            tail: start with only the last ``tail`` lines.
            all: read the whole file, earlier instances' lines too.

        Raises:
            RegistryError: the log file is a link, not a regular file, or not the
                instance owner's (nothing is read from it).
        """
        return read_lines(self, stderr=stderr, follow=follow, tail=tail, everything=all)
