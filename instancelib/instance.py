"""``Instance``: a container image running as a named background service."""

from __future__ import annotations

import contextlib
import datetime
import enum
import logging
import os
import selectors
import signal as signals
import socket
import subprocess
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NoReturn, overload

import psutil

from instancelib import launchplan
from instancelib.binds import Bind, parse_binds
from instancelib.cgroups import control as cgroup_control
from instancelib.cgroups import tree as cgroup_tree
from instancelib.cgroups.limits import Limits
from instancelib.cgroups.stats import Sample, Stats
from instancelib.cgroups.stats import sample as read_sample
from instancelib.cgroups.tree import CgroupInfo
from instancelib.durations import optional_seconds, seconds
from instancelib.environment import check_env, check_exec_size
from instancelib.errors import (
    ExecError,
    InstanceError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RegistryError,
    StartError,
    StartTimeout,
    Timeout,
    Unsupported,
)
from instancelib.image import Image
from instancelib.linux import client, envscripts, pathwalk, procfs, syscalls, wire
from instancelib.linux.launch import NAMESPACES
from instancelib.linux.syscalls import CLONE_NEWUSER
from instancelib.linux.userns import has_host_root
from instancelib.pidfile import PidFile
from instancelib.process import ExecResult, InstanceProcess, raise_exec_failure
from instancelib.readiness import ReadySpec, as_probe
from instancelib.records import InstanceRecord, validate_name
from instancelib.registry import InstanceRegistry

__all__ = ["Instance", "InstanceStatus"]

log = logging.getLogger("instancelib")

_RUNSCRIPT = "/.singularity.d/runscript"
_KILL_GRACE = 10.0  # how long SIGKILL of PID 1 may take to empty the namespace
_LOOP_RELEASE = 2.0  # how long a stopped instance's loop device may take to detach
_ERR_TAIL_LINES = 20
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
            "or look one up with InstanceRegistry().get(name)"
        )


class Instance(metaclass=_NoPublicConstructor):
    """A named instance of a container image, running in the background.

    Obtained from ``Instance.start`` or ``InstanceRegistry.get``/``list``.
    State is read live: ``is_running()`` and ``status`` look at the process,
    never at a cached flag.  Methods that signal or enter the instance first
    check that its PID still belongs to its PID 1 (PID + start time), so a
    reused PID is never acted on.

    Attributes:
        name: the instance's name (unique per user and host).
        pid: the host PID of the instance's PID 1.
        image: the image it was started from.
        registry: the registry holding its record.
    """

    name: str
    pid: int
    image: Image
    registry: InstanceRegistry
    _record: InstanceRecord
    _env: dict[str, str] | None
    _last_sample: Sample | None

    @classmethod
    def _from_record(cls, record: InstanceRecord, registry: InstanceRegistry) -> Instance:
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
        registry: InstanceRegistry | None = None,
        ready: ReadySpec | None = None,
        timeout: float = 30.0,
        fakeroot: bool = False,
        limits: Limits | None = None,
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

        Raises:
            InvalidName, InvalidArgument: bad name or option.
            ImageError: the image cannot be used.
            NameConflict: an instance of that name is running or starting.
            PermissionDenied: ``registry`` is another user's.
            Unsupported: the kernel or the administrator forbids what is needed
                (unprivileged user namespaces; the message names the setting),
                or no cgroup hierarchy here can enforce one of ``limits``.
            StartError: set-up or exec failed (``StartTimeout`` if out of time);
                nothing of the instance is left behind.
        """
        deadline = time.monotonic() + seconds(timeout, "timeout")
        validate_name(name)
        if not isinstance(image, Image):
            image = Image(image)
        bind_list = parse_binds(binds)
        probe = as_probe(ready) if ready is not None else None
        if limits is not None and not isinstance(limits, Limits):
            raise InvalidArgument(f"limits must be a Limits object (got {limits!r})")
        registry = registry if registry is not None else InstanceRegistry()
        if registry.owner_uid != os.geteuid():
            raise PermissionDenied("instances are started in your own registry, not in UID "
                                   f"{registry.owner_uid}'s", name=name)
        plan = launchplan.build_launch_plan(
            image, name, args=args, run=run, writable_tmpfs=writable_tmpfs, binds=bind_list,
            env=env, cleanenv=cleanenv, contain=contain, hostname=hostname, timeout=timeout,
            fakeroot=fakeroot,
        )
        if plan.note:
            log.warning("instance %r: %s", name, plan.note)
        launchplan.ensure_session_dir(plan.session_dir)
        options = {"run": bool(run), "args": list(plan.args),
                   "writable_tmpfs": bool(writable_tmpfs), "contain": bool(contain),
                   "hostname": hostname, "binds": [str(b) for b in bind_list],
                   "fakeroot": bool(fakeroot), "limits": limits.to_dict() if limits else {}}
        try:
            pid_target = PidFile(pid_file, name) if pid_file is not None else None
            try:
                return cls._start_planned(image, name, plan=plan, registry=registry,
                                          limits=limits, probe=probe, deadline=deadline,
                                          pid_file=pid_target, options=options)
            finally:
                if pid_target is not None:
                    pid_target.close()
        except InstanceError:
            raise  # (some are OSErrors too: Timeout, PermissionDenied)
        except OSError as err:
            # Whatever the host refused on the way (EMFILE, ENOMEM...): typed, and the
            # start's own clean-up has already run.
            raise StartError("cannot start the instance", name=name,
                             errno=err.errno, path=err.filename) from err

    @classmethod
    def _start_planned(cls, image: Image, name: str, *, plan: launchplan.LaunchPlan,
                       registry: InstanceRegistry, limits: Limits | None, probe: Any,
                       deadline: float, pid_file: PidFile | None,
                       options: dict[str, Any]) -> Instance:
        """The start itself, once every option is checked (see ``start``)."""
        name_lock = registry.claim_name(name)   # the lock itself says "being started"
        written: list[InstanceRecord | None] = [None]
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(lambda: registry.forget(name, written[-1]))
            on_failure.callback(name_lock.close)  # before the removal: it frees the name
            cgroup_plan = cgroup_tree.plan(name, limits)
            # Undone after PID 1 is gone (callbacks run last-registered first).
            made: list[CgroupInfo] = []
            on_failure.callback(lambda: [cgroup_control.remove(i, wait=0.5) for i in made])
            out_path, err_path = registry.log_paths(name)
            out_fd = _open_log(registry, name, "out")
            on_failure.callback(os.close, out_fd)
            err_fd = _open_log(registry, name, "err")
            on_failure.callback(os.close, err_fd)
            err_offset = os.fstat(err_fd).st_size
            wire_plan = plan.to_wire()
            wire_plan["cgroup_bases"] = cgroup_plan.bases() if cgroup_plan else []
            wire_plan["cgroup_wait"] = cgroup_plan is not None
            wire_plan["cgroup_roots"] = cgroup_plan.roots() if cgroup_plan else []
            wire_plan["cgroup_leaf"] = cgroup_plan.leaf if cgroup_plan else None
            try:
                launch = _Launch.begin(wire_plan, out_fd, err_fd)
            except (StartError, Unsupported) as err:
                err.name = name
                raise
            on_failure.callback(launch.abort)
            if cgroup_plan is not None:
                made.append(cgroup_plan.info(launch.cgroup_leaf or cgroup_plan.leaf))
            launch.identify()
            cgroup: CgroupInfo | None = None
            if cgroup_plan is not None:
                try:
                    cgroup, to_join = cgroup_tree.adopt(cgroup_plan, launch.cgroup_leaf)
                except (InvalidArgument, Unsupported, PermissionDenied) as err:
                    err.name = name
                    raise
                except OSError as err:
                    raise StartError("cannot set up the instance's cgroup", name=name,
                                     errno=err.errno, path=err.filename) from err
                launch.cgroup_ready(to_join)
            try:
                launch.wait_until_running(deadline)
            except StartError as err:
                err.name = name
                err.detail = err.detail or _tail(err_path, err_offset)
                raise
            for note in launch.notes:
                log.info("instance %r: %s", name, note)
            service_pid, service_start = _service_identity(launch.init_pid)
            record = InstanceRecord(
                name=name, state="running", pid=launch.init_pid, starttime=launch.starttime,
                image=image.path, image_kind=image.kind, log_out=str(out_path),
                log_err=str(err_path), started_at=time.time(), uid=os.getuid(),
                user=plan.user, cwd=launch.cwd, service_pid=service_pid,
                service_starttime=service_start,
                options=options,
                namespaces=NAMESPACES | (CLONE_NEWUSER if plan.userns is not None else 0),
                loop=launch.loop, cgroup=cgroup.to_dict() if cgroup is not None else None,
            )
            written.append(record)
            registry.publish(record, launch.env, name_lock)
            # PID 1 keeps the name's lock and a copy of its record for its whole life.
            launch.commit(name_lock.fd, registry.store.copy_for_init(record, launch.env))
            instance = cls._from_record(record, registry)
            instance._env = launch.env
            if probe is not None:
                launch.wait_until_ready(instance, probe, deadline, err_path, err_offset)
            if pid_file is not None:
                pid_file.write(launch.init_pid)
            on_failure.pop_all()
        launch.close()
        name_lock.close()
        os.close(out_fd)
        os.close(err_fd)
        log.debug("instance %r started (pid %d)", name, launch.init_pid)
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
    def ip(self) -> str:
        """The instance's IP address ("" when it shares the host's network)."""
        return self._record.ip

    @property
    def options(self) -> dict[str, Any]:
        """The start options (run, args, writable_tmpfs, contain, hostname, binds)."""
        return dict(self._record.options)

    @property
    def cgroup(self) -> CgroupInfo | None:
        """The instance's cgroup: where it is, which hierarchy serves each controller.

        None when it has none (an ordinary user without a delegated cgroup v2
        subtree), or when the instance is not running.
        """
        return self._live_cgroup() if self.is_running() else None

    def _live_cgroup(self) -> CgroupInfo | None:
        """The cgroup PID 1 (already checked to run) is in, as the kernel says (see control)."""
        return cgroup_control.live_info(self.pid, self._record.uid,
                                     CgroupInfo.from_dict(self._record.cgroup))

    @property
    def limits(self) -> Limits:
        """The limits the instance was started with (empty ``Limits()`` for none)."""
        return Limits(**self._record.options.get("limits", {}))

    @overload
    def stats(self, *, stream: Literal[False] = ..., interval: float = ...) -> Stats: ...

    @overload
    def stats(self, *, stream: Literal[True], interval: float = ...) -> Iterator[Stats]: ...

    def stats(self, *, stream: bool = False,
              interval: float = 1.0) -> Stats | Iterator[Stats]:
        """The instance's resource use now, read at once (see ``Stats``).

        With ``stream=True``, an iterator that yields a reading every
        ``interval`` seconds until the instance ends.

        Raises:
            NotFound: the instance is not running.
        """
        if stream:
            seconds(interval, "interval")
            return self._stream_stats(interval)
        return self._stats_now()

    def _stats_now(self) -> Stats:
        self._check_owner()
        if not self.is_running():
            raise NotFound("the instance is not running", name=self.name)
        cgroup = self._live_cgroup()
        # The first window starts when PID 1 did (boot time + its start time in ticks).
        started = int((psutil.boot_time() + self._record.starttime / _CLOCK_TICKS) * 1e9)
        try:
            stats, self._last_sample = read_sample(self.name, self.pid, cgroup,
                                                   self._last_sample, started)
        except OSError as err:
            if not self.is_running():
                raise NotFound("the instance is not running", name=self.name) from err
            raise
        return stats

    def _stream_stats(self, interval: float) -> Iterator[Stats]:
        while True:
            try:
                yield self._stats_now()
            except NotFound:
                return
            try:
                self.wait(interval)
            except Timeout:
                continue
            return

    def pause(self) -> None:
        """Freeze every process of the instance (its cgroup's freezer).

        Raises:
            NotFound: the instance is not running.
            Unsupported: the instance has no cgroup with a freezer.
        """
        self._freeze(True)

    def resume(self) -> None:
        """Thaw a paused instance."""
        self._freeze(False)

    def _freeze(self, frozen: bool) -> None:
        self._check_owner()
        if not self.is_running():
            raise NotFound("the instance is not running", name=self.name)
        cgroup = self._live_cgroup()
        if cgroup is None:
            raise Unsupported("pausing needs the instance to have a cgroup (root's instances "
                              "have one; an ordinary user's need a delegated cgroup v2 "
                              "subtree)", name=self.name)
        try:
            cgroup_control.freeze(cgroup, frozen)
        except TimeoutError as err:
            raise Timeout(str(err), name=self.name) from err
        except OSError as err:
            raise PermissionDenied("cannot freeze the instance's cgroup", name=self.name,
                                   errno=err.errno) from err

    @property
    def paused(self) -> bool:
        """Whether the instance is frozen (``pause()``)."""
        cgroup = self.cgroup
        return cgroup is not None and cgroup_control.is_frozen(cgroup)

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
        command = _check_argv(argv)
        self._check_owner()
        if not self.is_running():
            raise NotFound("the instance is not running", name=self.name)
        environment = envscripts.apply_overrides(self._environment(), check_env(env))
        check_exec_size(command, environment)
        cgroup = self._live_cgroup()
        if cgroup is not None and cgroup_control.is_frozen(cgroup):
            # The command would join the frozen cgroup and hang there (docker refuses too).
            raise ExecError("the instance is paused: resume() it first", name=self.name)
        with _Stdio(stdin, stdout, stderr, text) as stdio:
            status, theirs = wire.socketpair()
            try:
                try:
                    reply, _ = client.get_forkserver().request(
                        {"op": "exec", "pid": self.pid, "starttime": self._record.starttime,
                         "uid": self._record.uid, "namespaces": self._record.namespaces,
                         "cgroup_procs": cgroup.procs_files() if cgroup is not None else [],
                         "cwd": cwd or self._record.cwd,
                         "argv": command, "env": environment, "tty": bool(tty)},
                        [theirs.fileno(), *stdio.child_fds],
                    )
                except (StartError, Unsupported) as err:  # the fork-server itself failed
                    raise ExecError(f"cannot start the command: {err.message}", name=self.name,
                                    errno=err.errno) from err
                if not reply.get("ok"):
                    raise ExecError(f"cannot start the command: {reply.get('error')}",
                                    name=self.name)
                theirs.close()
                first, pidfd = _first_status(status)
                if not first.startswith("started "):
                    raise_exec_failure(first, command, self.name)
            except BaseException:
                status.close()
                raise
            finally:
                theirs.close()
            streams = stdio.parent_streams()
            process = InstanceProcess(command, pid=int(first.split()[1]), pidfd=pidfd,
                                      status=status, stdin=streams[0], stdout=streams[1],
                                      stderr=streams[2], instance_name=self.name)
            stdio.keep_parent_streams()
        return process

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
        """
        timeout = optional_seconds(timeout, "timeout")
        process = self.popen(argv, stdin=subprocess.PIPE if input is not None else
                             subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, cwd=cwd)
        try:
            out, err = process.communicate(input, timeout)
        except Timeout:
            process.kill()
            process.communicate()
            raise
        if text:
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        return ExecResult(process.returncode if process.returncode is not None else -1, out, err)

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
        return self.exec(self.run_command(_check_args(args)), env=env, input=input,
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
            syscalls.pidfd_send_signal(pidfd, _check_signal(signal))
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
        _remove_cgroup(self)
        self.registry.remove(self._record)

    # -- logs -------------------------------------------------------------------------------

    def logs(self, *, stderr: bool = False, follow: bool = False,
             tail: int | None = None) -> Iterator[str]:
        """The service's output, line by line (without line ends).

        Args:
            stderr: read the error log instead of the output log.
            follow: keep reading new lines until the instance ends.
            tail: start with only the last ``tail`` lines.

        Raises:
            RegistryError: the log file is a link, not a regular file, or not the
                instance owner's (nothing is read from it).
        """
        if tail is not None and (not isinstance(tail, int) or tail < 0):
            raise InvalidArgument(f"tail must be a non-negative integer (got {tail!r})")
        self._check_owner()
        # Opened now, through the registry's checked directory: never a link, a FIFO
        # or another user's file, even for root reading a user's logs.
        fd = self.registry.store.open_log(self.name, "err" if stderr else "out", write=False)
        if fd is None:
            return iter(())
        return _follow_log(os.fdopen(fd, "rb"), self, follow=follow, tail=tail)


# -- stopping ----------------------------------------------------------------------------------


def stop_instances(instances: Sequence[Instance], *, signal: int = signals.SIGINT,
                   timeout: float = 10.0, force: bool = False) -> None:
    """Stop several instances at once: signal them all, then wait for all.

    Whatever is still running after ``timeout`` seconds is sent SIGKILL.
    """
    sig = signals.SIGKILL if force else _check_signal(signal)
    seconds(timeout, "timeout", allow_zero=True)
    pidfds: list[tuple[Instance, int]] = []
    cgroups: dict[str, CgroupInfo] = {}
    try:
        for instance in instances:
            try:
                pidfd = instance._pidfd()
            except NotFound:
                _remove_cgroup(instance)
                instance._forget()
                continue
            pidfds.append((instance, pidfd))
            cgroup = instance._live_cgroup()  # the pidfd proved PID 1 alive
            if cgroup is not None:
                cgroups[instance.name] = cgroup
                if sig != signals.SIGKILL:
                    # A paused instance cannot act on a signal: thaw it first.
                    with contextlib.suppress(OSError, TimeoutError, Unsupported):
                        cgroup_control.freeze(cgroup, False, timeout=1.0)
            log.debug("stopping instance %r (pid %d)", instance.name, instance.pid)
            try:
                syscalls.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                pass
            except PermissionError as err:
                raise PermissionDenied("not allowed to signal the instance",
                                       name=instance.name, errno=err.errno) from err
        deadline = time.monotonic() + timeout
        for instance, pidfd in pidfds:
            if procfs.wait_pidfd(pidfd, max(0.0, deadline - time.monotonic())):
                continue
            log.warning("instance %r still running %g s after signal %d: killing it",
                        instance.name, timeout, sig)
            if instance.name in cgroups:
                # Every process of its cgroup, whatever namespace or group it is in.
                with contextlib.suppress(OSError):
                    cgroup_control.kill(cgroups[instance.name])
            with contextlib.suppress(ProcessLookupError):
                syscalls.pidfd_send_signal(pidfd, signals.SIGKILL)
            if not procfs.wait_pidfd(pidfd, _KILL_GRACE):
                raise Timeout("still running after SIGKILL", name=instance.name,
                              pid=instance.pid)
    finally:
        for _, pidfd in pidfds:
            os.close(pidfd)
    for stopped, _ in pidfds:
        cgroup = cgroups.get(stopped.name)
        if cgroup is not None:
            # PID 1 is gone; anything of the instance still in its cgroup goes too.
            if cgroup_control.populated(cgroup):
                with contextlib.suppress(OSError):
                    cgroup_control.kill(cgroup)
            cgroup_control.remove(cgroup)
        stopped._forget()
    _wait_for_loop_devices([i for i, _ in pidfds])


def _remove_cgroup(instance: Instance) -> None:
    """Remove the cgroup of an instance found dead (its PID 1 ended without a stop)."""
    if instance._record.cgroup is not None and (has_host_root()
                                                or instance._record.uid == os.geteuid()):
        # Only removed, never killed: a record is no proof of what the cgroup holds.
        cgroup_control.remove_dead(instance._record.cgroup, instance._record.uid)


def _wait_for_loop_devices(stopped: Sequence[Instance]) -> None:
    """Return once the loop devices only the stopped instances used are detached.

    Autoclear detaches a device when its last mount goes, with the instance's
    mount namespace; that can lag PID 1's exit by a moment.  A device another
    running instance of this registry still uses is not waited for.
    """
    devices = {i._record.loop for i in stopped if i._record.loop}
    if not devices:
        return
    for registry in {i.registry for i in stopped}:
        devices -= {record.loop for record in registry.records() if record.loop}
    deadline = time.monotonic() + _LOOP_RELEASE
    while devices and time.monotonic() < deadline:
        devices = {d for d in devices if _loop_attached(d)}
        if devices:
            time.sleep(0.001)
    if devices:
        log.debug("loop devices still attached after stop (shared?): %s", sorted(devices))


def _loop_attached(device: str) -> bool:
    return os.path.exists(f"/sys/block/{os.path.basename(device)}/loop/backing_file")


# -- start-up conversation with PID 1 ----------------------------------------------------------


class _Launch:
    """The caller's end of one instance start (see ``linux/init.py`` for the other)."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.init_pid = 0
        self.starttime = 0
        self.pidfd = -1
        self.env: dict[str, str] = {}
        self.cwd = "/"
        self.notes: list[str] = []
        self.loop: str | None = None
        self.service_status: int | None = None
        self.cgroup_leaf: str | None = None

    @classmethod
    def begin(cls, plan: dict[str, Any], out_fd: int, err_fd: int) -> _Launch:
        ours, theirs = client.new_channel()
        launch = cls(ours)
        try:
            reply, fds = client.get_forkserver().request({"op": "start", "plan": plan},
                                                         [theirs.fileno(), out_fd, err_fd])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if not reply.get("ok") or len(fds) != 1:
            ours.close()
            for fd in fds:
                os.close(fd)
            error = Unsupported if reply.get("unsupported") else StartError
            raise error(str(reply.get("message") or reply.get("error") or "launch failed"),
                        step=reply.get("step"), errno=reply.get("errno"))
        launch.pidfd = fds[0]
        leaf = reply.get("cgroup_leaf")
        launch.cgroup_leaf = str(leaf) if leaf else None
        launch.init_pid = int(reply["init_pid"])
        return launch

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.channel.settimeout(remaining)
        message, fds = wire.recv_message(self.channel)
        for fd in fds:
            os.close(fd)
        return message

    def wait_until_running(self, deadline: float) -> None:
        """Wait for PID 1's "ready" report (or its error)."""
        ready = None
        while ready is None:
            try:
                message = self._receive(deadline)
            except TimeoutError:
                raise StartTimeout("the instance did not finish setting up in time") from None
            if message is None:
                raise StartError("the instance's PID 1 exited during set-up")
            event = message.get("event")
            if event == "ready":
                ready = message
            elif event == "error":
                raise StartError(message.get("message") or "set-up failed",
                                 step=message.get("step"), errno=message.get("errno"),
                                 path=message.get("path"))
        self.env = {str(k): str(v) for k, v in ready["env"].items()}
        self.cwd = str(ready["cwd"])
        self.notes = [str(note) for note in ready.get("notes", [])]
        self.loop = ready.get("loop")

    def identify(self) -> None:
        """Note the new PID 1's start time; ``self.pidfd`` (from its parent) pins the process."""
        pid = self.init_pid
        stat = procfs.read_stat(pid)
        # Read while the pidfd's process is alive, the stat is surely that process's.
        if stat is None or not stat.running or procfs.wait_pidfd(self.pidfd, 0):
            raise StartError("the instance's PID 1 exited during set-up")
        self.starttime = stat.starttime

    def cgroup_ready(self, procs_files: list[str]) -> None:
        """Tell PID 1 its cgroup is named and limited (and which parts it must still join)."""
        wire.send_message(self.channel, {"event": "cgroup", "procs": procs_files})

    def commit(self, name_lock: int, record_copy: int) -> None:
        """Tell PID 1 the record is on disk: from now on it runs on its own.

        It gets the name's lock and a sealed copy of its record to keep (see
        ``recordstore``); ``record_copy`` is closed here.
        """
        try:
            # Descriptors in flight are held by the kernel: the lock stays taken
            # until PID 1 has them (a recovery meanwhile waits for that).
            wire.send_message(self.channel, {"event": "commit"}, [name_lock, record_copy])
        finally:
            os.close(record_copy)

    def wait_until_ready(self, instance: Instance, probe: Any, deadline: float,
                         err_path: Path, err_offset: int) -> None:
        delay = 0.002
        with selectors.DefaultSelector() as selector:
            selector.register(self.channel, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if probe.check(instance, max(remaining, 0.0)):
                    return
                if not instance.is_running():
                    raise StartError("the instance ended before it was ready", name=instance.name,
                                     detail=_tail(err_path, err_offset))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StartTimeout(f"the service was not ready within the timeout "
                                       f"({probe!r})", name=instance.name,
                                       detail=_tail(err_path, err_offset))
                if selector.select(min(delay, remaining)):
                    self._note_service_exit(instance, err_path, err_offset)
                delay = min(delay * 2, 0.1)

    def _note_service_exit(self, instance: Instance, err_path: Path, err_offset: int) -> None:
        self.channel.settimeout(0.0)
        try:
            message, _ = wire.recv_message(self.channel)
        except (TimeoutError, BlockingIOError):
            return
        if message is not None and message.get("event") == "service_exit":
            status = int(message["status"])
            if status != 0:
                raise StartError(f"the service exited with status {status} before it was ready",
                                 name=instance.name, detail=_tail(err_path, err_offset))

    def abort(self) -> None:
        """Kill PID 1 (and so everything in the instance) and wait for it to be gone."""
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                syscalls.pidfd_send_signal(self.pidfd, signals.SIGKILL)
            procfs.wait_pidfd(self.pidfd, _KILL_GRACE)
        self.close()

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.channel.close()


# -- helpers -----------------------------------------------------------------------------------


class _Stdio:
    """Turn subprocess-style stdio arguments into fds for the child and streams for us."""

    def __init__(self, stdin: Any, stdout: Any, stderr: Any, text: bool) -> None:
        self.text = text
        self.child_fds: list[int] = []
        self._parent: list[IO[Any] | None] = [None, None, None]
        self._to_close: list[int] = []
        self._keep = False
        for index, spec in enumerate((stdin, stdout, stderr)):
            self.child_fds.append(self._child_fd(index, spec))

    def _child_fd(self, index: int, spec: Any) -> int:
        if spec is None:
            try:
                os.fstat(index)
                return index
            except OSError:  # this process has no such descriptor: the command gets /dev/null
                spec = subprocess.DEVNULL
        if spec == subprocess.PIPE:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            child, parent = (read_end, write_end) if index == 0 else (write_end, read_end)
            self._to_close.append(child)
            stream: IO[Any]
            if self.text:
                stream = open(parent, "w" if index == 0 else "r", encoding="utf-8",  # noqa: SIM115
                              errors="replace")
            else:
                stream = open(parent, "wb" if index == 0 else "rb", buffering=0)  # noqa: SIM115
            self._parent[index] = stream
            return child
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self._to_close.append(fd)
            return fd
        if spec == subprocess.STDOUT:
            if index != 2:
                raise InvalidArgument("subprocess.STDOUT is only valid for stderr")
            return self.child_fds[1]
        if isinstance(spec, int) and spec >= 0:
            return spec
        if hasattr(spec, "fileno"):
            return int(spec.fileno())
        raise InvalidArgument(f"unsupported stdio argument {spec!r}")

    def parent_streams(self) -> tuple[IO[Any] | None, IO[Any] | None, IO[Any] | None]:
        return self._parent[0], self._parent[1], self._parent[2]

    def keep_parent_streams(self) -> None:
        self._keep = True

    def __enter__(self) -> _Stdio:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for fd in self._to_close:
            os.close(fd)
        if not self._keep:  # popen failed: nobody will read these
            for stream in self._parent:
                if stream is not None:
                    stream.close()


def _first_status(status: socket.socket, timeout: float = 60.0) -> tuple[str, int]:
    """The joiner's first report: ``started PID`` with a pidfd, or ``error ...``."""
    status.settimeout(timeout)
    try:
        data, fds = wire.recv_fds(status, 4096, 1)
    except TimeoutError:
        raise ExecError("no answer from the fork-server's joiner") from None
    if not data:
        return "error 0 the joiner exited without reporting", -1
    if not fds:
        return data.decode(), -1
    return data.decode(), fds[0]


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str):
        raise InvalidArgument(f"argv must be a list of strings, not a string (got {argv!r}); "
                              f"to run a shell command use ['sh', '-c', {argv!r}]")
    command = list(argv)
    if not command:
        raise InvalidArgument("argv must not be empty")
    return list(_check_args(command))


def _check_args(args: Sequence[str]) -> tuple[str, ...]:
    checked = tuple(args)
    for arg in checked:
        if not isinstance(arg, str) or "\0" in arg:
            raise InvalidArgument(f"arguments must be strings without NUL bytes (got {arg!r})")
    return checked


def _check_signal(sig: int) -> int:
    valid = {int(s) for s in signals.valid_signals()}
    if not isinstance(sig, int) or int(sig) not in valid or int(sig) == 0:
        raise InvalidArgument(f"not a signal number: {sig!r}")
    return int(sig)


def _open_log(registry: InstanceRegistry, name: str, stream: str) -> int:
    """The instance's log, opened for appending (never through a link; see ``recordstore``)."""
    try:
        fd = registry.store.open_log(name, stream, write=True)
    except (RegistryError, OSError) as err:
        raise StartError(f"cannot open the log file: {err}", name=name,
                         path=str(registry.logs_dir / f"{name}.{stream}"),
                         errno=getattr(err, "errno", None)) from err
    assert fd is not None
    return fd


def _service_identity(init_pid: int) -> tuple[int, int]:
    for pid in procfs.children_of(init_pid):
        stat = procfs.read_stat(pid)
        if stat is not None:
            return pid, stat.starttime
    return 0, 0


def _tail(path: Path, offset: int, lines: int = _ERR_TAIL_LINES) -> str | None:
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


def _follow_log(handle: IO[bytes], instance: Instance, *, follow: bool,
                tail: int | None) -> Iterator[str]:
    pidfd = -1
    try:
        if tail is not None:
            yield from (line.decode(errors="replace") for line in
                        deque((raw.rstrip(b"\n") for raw in handle), maxlen=tail))
            pending = b""
        else:
            pending = b""
            for raw in handle:
                if raw.endswith(b"\n"):
                    yield raw[:-1].decode(errors="replace")
                else:
                    pending = raw
        if not follow:
            if pending:
                yield pending.decode(errors="replace")
            return
        try:
            pidfd = instance._pidfd()
        except NotFound:
            pidfd = -1
        while True:
            ended = pidfd < 0 or procfs.wait_pidfd(pidfd, 0.1)
            chunk = handle.read()
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.decode(errors="replace")
            if ended:
                if pending:
                    yield pending.decode(errors="replace")
                return
    finally:
        handle.close()
        if pidfd >= 0:
            os.close(pidfd)
