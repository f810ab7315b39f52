"""Starting an instance: the start transaction and the caller's end of the PID 1 protocol.

The sequence (each step undone, last first, if a later one fails, so a failed
start leaves nothing behind):

1. claim the name (its lock says "being started");
2. plan the cgroup and open the logs;
3. ask the fork-server for a PID 1 (``linux/forkserver.py``), which sets the
   instance up (``linux/init.py``, ``linux/container.py``) while we name and
   limit its cgroup;
4. wait for PID 1's "ready" (the start script has been exec'd);
5. publish the record, hand PID 1 the name's lock and a sealed copy of its
   record ("commit": from now on it runs on its own);
6. with ``ready``, wait until the service answers; write the pid file.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import selectors
import signal as signals
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instancelib.cgroups import control as cgroup_control
from instancelib.cgroups import tree as cgroup_tree
from instancelib.cgroups.tree import CgroupInfo
from instancelib.errors import (
    InstanceError,
    InvalidArgument,
    NameConflict,
    PermissionDenied,
    StartError,
    StartTimeout,
    Unsupported,
)
from instancelib.image import Image
from instancelib.launchplan import LaunchPlan, build_launch_plan, ensure_session_dir
from instancelib.linux import client, procfs, syscalls, wire
from instancelib.linux.launch import NAMESPACES
from instancelib.linux.syscalls import CLONE_NEWNET, CLONE_NEWUSER
from instancelib.logs import open_for_append, tail_since
from instancelib.network import attach as network_attach
from instancelib.network import portmaps
from instancelib.options import StartOptions
from instancelib.pidfile import PidFile
from instancelib.readiness import Probe, failure_of
from instancelib.records.directory import InstanceRecords
from instancelib.records.record import InstanceRecord
from instancelib.stopping import KILL_GRACE, release_ended
from instancelib.verbosity import VERBOSE

if TYPE_CHECKING:
    from instancelib.instance import Instance

__all__ = ["ABANDON", "Launch", "start_instance"]

log = logging.getLogger("instancelib")

# Builds the Instance of a record (``env``: the start's environment; None: load it when needed).
MakeInstance = Callable[[InstanceRecord, InstanceRecords, "dict[str, str] | None"], "Instance"]
_HELD_POLL = 0.02  # exist_ok: how often a name another process is starting is looked at

# Set (to an Event) by a caller that may give up on a start from another thread: the
# async face, when its task is cancelled.  The readiness wait looks at it and ends the
# start (undone, as any failed start) instead of waiting out its timeout.
ABANDON: contextvars.ContextVar[Any] = contextvars.ContextVar("instancelib_abandon",
                                                              default=None)


def start_instance(image: Image | str | os.PathLike[str], name: str, options: StartOptions, *,
                   registry: InstanceRecords | None, make: MakeInstance,
                   exist_ok: bool = False) -> Instance:
    """Start ``image`` as ``name`` (see ``Instance.start``); ``make`` builds the Instance.

    ``exist_ok``: a running instance of that name with the same image and
    options is returned instead (one being started elsewhere is waited for).
    """
    deadline = time.monotonic() + options.timeout
    if not isinstance(image, Image):
        image = Image(image)
    registry = registry if registry is not None else InstanceRecords(on_ended=release_ended)
    if registry.owner_uid != os.geteuid():
        raise PermissionDenied("instances are started in your own registry, not in UID "
                               f"{registry.owner_uid}'s", name=name)
    while True:
        if exist_ok:
            existing = _same_running(registry, image, name, options, make)
            if existing is not None:
                return existing
        try:
            return _start_checked(image, name, options, registry=registry, make=make,
                                  deadline=deadline)
        except NameConflict as err:
            # Another process took the name meanwhile: the same instance, or one to wait for.
            if not exist_ok or not registry.name_held(name) or time.monotonic() > deadline:
                raise
            if registry.running_record(name) is None:
                time.sleep(_HELD_POLL)
            log.debug("instance %r: %s; looking again", name, err.message)


def _same_running(registry: InstanceRecords, image: Image, name: str, options: StartOptions,
                  make: MakeInstance) -> Instance | None:
    """The running instance ``name`` if it has this image and these options (else
    ``NameConflict`` saying what differs); None when none runs."""
    record = registry.running_record(name)
    if record is None:
        return None
    wanted = {"image": image.path, **options.to_record()}
    found = {"image": record.image, **record.options}
    differs = [key for key in wanted if wanted[key] != found.get(key)]
    if differs:
        what = "; ".join(f"{key}: {found.get(key)!r} running, {wanted[key]!r} asked"
                         for key in differs)
        raise NameConflict(f"instance {name} already exists with other settings ({what})",
                           name=name, pid=record.pid, named=True)
    instance = make(record, registry, None)
    if options.pid_file is not None:
        target = PidFile(options.pid_file, name)
        try:
            target.write(record.pid)
        finally:
            target.close()
    return instance


def _start_checked(image: Image, name: str, options: StartOptions, *,
                   registry: InstanceRecords, make: MakeInstance, deadline: float) -> Instance:
    """A start whose image and registry are checked."""
    plan = build_launch_plan(image, name, options)
    if plan.note:
        log.warning("instance %r: %s", name, plan.note)
    ensure_session_dir(plan.session_dir)
    try:
        pid_target = PidFile(options.pid_file, name) if options.pid_file is not None else None
        try:
            return _start_planned(image, name, options, plan=plan, registry=registry,
                                  deadline=deadline, pid_file=pid_target, make=make)
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


def _start_planned(image: Image, name: str, options: StartOptions, *, plan: LaunchPlan,
                   registry: InstanceRecords, deadline: float, pid_file: PidFile | None,
                   make: MakeInstance) -> Instance:
    """The start itself, once every option is checked."""
    name_lock = registry.claim_name(name)   # the lock itself says "being started"
    written: list[InstanceRecord | None] = [None]
    with contextlib.ExitStack() as on_failure:
        on_failure.callback(lambda: registry.forget(name, written[-1]))
        on_failure.callback(name_lock.close)  # before the removal: it frees the name
        # Addresses first: a requested address that is taken fails before anything starts.
        attachments = network_attach.allocate(plan.network, name)
        holders: list[tuple[int, int, str] | None] = [None]  # PID 1, once it holds them
        on_failure.callback(lambda: network_attach.release(attachments, holders[-1]))
        # Host ports are bound now (in use: an error before anything starts); the
        # forwarder gets them once PID 1 runs, and ends with it.
        ports = network_attach.bind_ports(plan.network, attachments, name)
        user_mode = plan.network.user_mode
        if user_mode is not None:  # pasta binds them itself: in use is an error now too
            network_attach.check_ports_free(user_mode, name)
        for port in ports:
            on_failure.callback(port[0].close)
        cgroup_plan = cgroup_tree.plan(name, options.limits, options.cgroup_parent)
        # Undone after PID 1 is gone (callbacks run last-registered first).
        made: list[CgroupInfo] = []
        on_failure.callback(lambda: [cgroup_control.remove(i, wait=0.5) for i in made])
        out_path, err_path = registry.log_paths(name)
        out_fd = open_for_append(registry, name, "out")
        on_failure.callback(os.close, out_fd)
        err_fd = open_for_append(registry, name, "err")
        on_failure.callback(os.close, err_fd)
        out_offset, err_offset = os.fstat(out_fd).st_size, os.fstat(err_fd).st_size
        wire_plan = plan.to_wire()
        wire_plan["cgroup_bases"] = cgroup_plan.bases() if cgroup_plan else []
        wire_plan["cgroup_wait"] = cgroup_plan is not None
        wire_plan["cgroup_roots"] = cgroup_plan.roots() if cgroup_plan else []
        wire_plan["cgroup_leaf"] = cgroup_plan.leaf if cgroup_plan else None
        try:
            launch = Launch.begin(wire_plan, out_fd, err_fd)
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
        forwarder: list[int] = []
        if attachments or user_mode is not None:
            try:
                netns_fd, userns_fd = launch.wait_for_netns(deadline)
                try:
                    if user_mode is not None:
                        forwarder = list(network_attach.start_pasta(
                            user_mode, (netns_fd, userns_fd),
                            (launch.init_pid, launch.starttime), err_fd, name))
                    else:
                        network_attach.attach(attachments, netns_fd, name)
                finally:
                    os.close(netns_fd)
                    os.close(userns_fd)
            except StartError as err:
                err.name = name
                raise
            launch.network_ready([a.for_pid1() for a in attachments])
        try:
            launch.wait_until_running(deadline)
        except StartError as err:
            err.name = name
            err.detail = err.detail or tail_since(err_path, err_offset)
            raise
        for note in launch.notes:
            log.log(VERBOSE, "instance %r: %s", name, note)
        if ports:
            forwarder = list(portmaps.start_forwarder(ports, launch.init_pid, launch.starttime,
                                                      name))
        service_pid, service_start = _service_identity(launch.init_pid)
        record = InstanceRecord(
            name=name, state="running", pid=launch.init_pid, starttime=launch.starttime,
            image=image.path, image_kind=image.kind, log_out=str(out_path),
            log_err=str(err_path), started_at=time.time(), uid=os.getuid(),
            user=plan.user, cwd=launch.cwd, service_pid=service_pid,
            service_starttime=service_start,
            options=options.to_record(),
            namespaces=NAMESPACES | (CLONE_NEWUSER if plan.userns is not None else 0)
            | (CLONE_NEWNET if plan.network.namespace else 0),
            loop=launch.loop, cgroup=cgroup.to_dict() if cgroup is not None else None,
            ip=str(attachments[0].address) if attachments else "",
            interfaces=[_interface_record(a, ports, forwarder) for a in attachments]
            + ([network_attach.user_mode_record(user_mode, forwarder)] if user_mode else []),
            log_offsets={"out": out_offset, "err": err_offset},
        )
        written.append(record)
        registry.publish(record, launch.env, name_lock)
        # PID 1 keeps the name's lock and a copy of its record for its whole life.
        state_fd = registry.store.open_state(name, write=True) \
            if options.restart != "no" or options.health is not None else None
        launch.commit(name_lock.fd, registry.store.copy_for_init(record, launch.env),
                      end_with_caller=options.end_with_caller, state=state_fd)
        if attachments:
            holders.append((launch.init_pid, launch.starttime, name))
            network_attach.hand_over(attachments, (launch.init_pid, launch.starttime, name))
        instance = make(record, registry, launch.env)
        if options.ready is not None:
            launch.wait_until_ready(instance, options.ready, deadline, err_path, err_offset)
        if pid_file is not None:
            pid_file.write(launch.init_pid)
        on_failure.pop_all()
    launch.close()
    name_lock.close()
    os.close(out_fd)
    os.close(err_fd)
    for port in ports:
        port[0].close()  # the forwarder has them
    log.debug("instance %r started (pid %d)", name, launch.init_pid)
    return instance


def _interface_record(attachment: network_attach.Attachment, ports: list[Any],
                      forwarder: list[int]) -> dict[str, Any]:
    """What the record keeps of an interface: its port maps and, with them, the forwarder."""
    maps = [str(port_map) for _, port_map, ip in ports if ip == str(attachment.address)]
    return {**attachment.to_record(), "port_maps": maps, "forwarder": forwarder if maps else []}


def _setup_error(message: dict[str, Any]) -> StartError:
    """The StartError of PID 1's "error" report (the step, errno and path it names)."""
    return StartError(message.get("message") or "set-up failed", step=message.get("step"),
                      errno=message.get("errno"), path=message.get("path"))


def _service_identity(init_pid: int) -> tuple[int, int]:
    for pid in procfs.children_of(init_pid):
        stat = procfs.read_stat(pid)
        if stat is not None:
            return pid, stat.starttime
    return 0, 0


class Launch:
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
    def begin(cls, plan: dict[str, Any], out_fd: int, err_fd: int) -> Launch:
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
                raise _setup_error(message)
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

    def wait_for_netns(self, deadline: float) -> tuple[int, int]:
        """PID 1's network namespace and the user namespace owning it, as descriptors (it
        sends them once it has made the network namespace)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StartTimeout("the instance did not finish setting up in time")
        self.channel.settimeout(remaining)
        try:
            message, fds = wire.recv_message(self.channel)
        except TimeoutError:
            raise StartTimeout("the instance did not make its network namespace in time") \
                from None
        if message is not None and message.get("event") == "netns" and len(fds) == 2:
            return fds[0], fds[1]
        for fd in fds:
            os.close(fd)
        if message is not None and message.get("event") == "error":
            raise _setup_error(message)
        raise StartError("the instance's PID 1 exited during set-up")

    def network_ready(self, interfaces: list[dict[str, Any]]) -> None:
        """Tell PID 1 its interfaces exist: it addresses and routes them, then goes on."""
        wire.send_message(self.channel, {"event": "network", "interfaces": interfaces})

    def cgroup_ready(self, procs_files: list[str]) -> None:
        """Tell PID 1 its cgroup is named and limited (and which parts it must still join)."""
        wire.send_message(self.channel, {"event": "cgroup", "procs": procs_files})

    def commit(self, name_lock: int, record_copy: int, *, end_with_caller: bool = False,
               state: int | None = None) -> None:
        """Tell PID 1 the record is on disk: from now on it runs on its own.

        It gets the name's lock and a sealed copy of its record to keep (see
        ``records.store``); ``record_copy`` is closed here.  ``state`` (closed
        here) is the file where it writes its service's state (a restart
        policy).  With ``end_with_caller`` it also gets a pidfd of this
        process, and ends the instance when that becomes readable (this process
        has exited).
        """
        fds = [name_lock, record_copy]
        own = [record_copy]
        if state is not None:
            fds.append(state)
            own.append(state)
        if end_with_caller:
            fds.append(os.pidfd_open(os.getpid()))
            own.append(fds[-1])
        try:
            # Descriptors in flight are held by the kernel: the lock stays taken
            # until PID 1 has them (a recovery meanwhile waits for that).
            wire.send_message(self.channel, {"event": "commit", "watch": end_with_caller,
                                             "state": state is not None}, fds)
        finally:
            for fd in own:
                os.close(fd)

    def wait_until_ready(self, instance: Instance, probe: Probe, deadline: float,
                         err_path: Path, err_offset: int) -> None:
        delay = 0.002
        abandon = ABANDON.get()
        with selectors.DefaultSelector() as selector:
            selector.register(self.channel, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if probe.check(instance, max(remaining, 0.0)):
                    return
                if abandon is not None and abandon.is_set():
                    raise StartError("the start was cancelled before the service was ready",
                                     name=instance.name)
                if not instance.is_running():
                    raise StartError("the instance ended before it was ready", name=instance.name,
                                     detail=tail_since(err_path, err_offset))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    said = [failure_of(probe), tail_since(err_path, err_offset)]
                    raise StartTimeout(f"the service was not ready within the timeout "
                                       f"({probe!r})", name=instance.name,
                                       detail="\n".join(t for t in said if t) or None)
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
            if status != 0 and not message.get("restarting"):
                raise StartError(f"the service exited with status {status} before it was ready",
                                 name=instance.name, detail=tail_since(err_path, err_offset))

    def abort(self) -> None:
        """Kill PID 1 (and so everything in the instance) and wait for it to be gone."""
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                syscalls.pidfd_send_signal(self.pidfd, signals.SIGKILL)
            procfs.wait_pidfd(self.pidfd, KILL_GRACE)
        self.close()

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.channel.close()
