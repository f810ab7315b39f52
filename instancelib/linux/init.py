"""PID 1 of an instance.

Forked by the launcher right after ``unshare(CLONE_NEWPID ...)``, so it is
PID 1 of the new PID namespace.  It:

0. waits, as a *spare*, in its own session with stdio on /dev/null, until
   the fork-server hands it a plan; then unshares its mount namespace;
1. names itself after the instance (and joins its cgroup, when it was not
   born in one);
2. builds the root filesystem and pivots into it (``container``); then, if
   the instance has a cgroup, waits until the caller has named it and
   written its limits;
3. computes the environment (``envscripts``) and spawns the start/run script
   with ``posix_spawn``; an exec failure is reported, not swallowed;
4. reports to the caller and waits for "commit": the caller answers once the
   registry record is on disk.  If the caller dies first (EOF), everything
   is killed, so a half-started instance can never run untracked;
5. stays resident: reaps every orphan, forwards SIGHUP/SIGUSR1/SIGUSR2 to the
   service's process group, and on SIGINT/SIGTERM forwards the signal to every
   process of the instance.  It then exits as soon as the service has exited
   (the kernel kills whatever else is left: a shell's background jobs ignore
   SIGINT and would otherwise hold the stop for its whole grace period) or, if
   the service had already gone (a daemonising start script), once no process
   is left.  When the service exits by itself the instance stays up, idle
   (Singularity semantics).

It imports only the standard library and allocates little after start-up:
with 50 instances up, every one of them is resident.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import select
import signal
import socket
from typing import Any

from instancelib.linux import (
    cgroupdirs,
    container,
    envscripts,
    health,
    netns,
    procfs,
    supervisor,
    syscalls,
    wire,
)

__all__ = ["RESTART_SIGNAL", "run_init", "run_spare"]

STARTSCRIPT = "/.singularity.d/startscript"
RUNSCRIPT = "/.singularity.d/runscript"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_FORWARD_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT,
                    signal.SIGWINCH)
RESTART_SIGNAL = supervisor.RESTART_SIGNAL
_HANDLED = (signal.SIGCHLD, *_STOP_SIGNALS, *_FORWARD_SIGNALS, RESTART_SIGNAL)
_KEPT: list[int] = []
_LINGER_POLL_MS = 5


def run_spare(control: socket.socket) -> None:
    """Wait as a spare PID 1 for a plan, then become that instance; never returns.

    EOF on ``control`` (the fork-server went away) ends the spare.
    """
    wakeup = _prepare_process()
    try:
        job, fds = wire.recv_message(control)
    except OSError:
        os._exit(1)
    if job is None or len(fds) != 3:
        os._exit(0)
    with contextlib.suppress(BlockingIOError):  # signals that reached the spare are not ours
        os.read(wakeup, 4096)
    channel_fd, out_fd, err_fd = fds
    run_init(job["plan"], socket.socket(fileno=channel_fd), out_fd, err_fd, wakeup,
             control=control)


def run_init(plan: dict[str, Any], channel: socket.socket, out_fd: int, err_fd: int,
             wakeup: int, *, control: socket.socket | None = None) -> None:
    """Become the instance described by ``plan``; never returns.

    ``control`` (the fork-server's socket) hears "committed" once the caller
    has recorded us; if we die before that, the fork-server sees it close
    without a word, and cleans up after us should the caller be gone too.
    """
    service: int | None = None
    try:
        _name_process(plan["name"], plan["user"])
        try:
            try:
                syscalls.unshare(syscalls.CLONE_NEWNS)
            except OSError as err:
                raise container.SetupError("unshare the mount namespace", err.strerror or "",
                                           errno=err.errno) from err
            network = plan.get("network") or {}
            if network.get("namespace"):
                _enter_network_namespace(channel, bool(network.get("host_side")))
            # The plan's note changes what works inside (fakeroot without a
            # range): it goes to the instance's log; set-up notes only to the caller.
            if plan.get("note"):
                os.write(err_fd, f"instancelib: {plan['note']}\n".encode())
            # The host's cgroup mounts, opened while they are still in view.
            roots = _open_cgroup_roots(plan.get("cgroup_roots") or ())
            report = container.setup_container(plan)
            if plan.get("cgroup_wait"):
                # Nothing of the image runs (env scripts, service) before the
                # caller has named our cgroup and written its limits.
                _await_cgroup(channel, roots)
            for fd in roots.values():
                os.close(fd)
            if network.get("host_side"):
                # The service never sees a half-made network: the host side has made
                # the interfaces; we address and route them before anything runs.
                _await_network(channel)
            env = _compute_environment(plan, out_fd, err_fd)
            cwd = _choose_cwd(plan["cwd"])
            service = _spawn_service(plan, env, cwd, out_fd, err_fd)
            _protect_from_oom_killer()
        except container.SetupError as err:
            wire.send_message(channel, {"event": "error", **err.to_wire()})
            os._exit(1)
        finally:
            if service is None:  # a service keeps them: it may be started again
                os.close(out_fd)
                os.close(err_fd)
        wire.send_message(channel, {"event": "ready", "env": env, "cwd": cwd,
                                    "service": service, "notes": report["notes"],
                                    "loop": report["loop"]})
        answer, kept = wire.recv_message(channel)
        if answer is None or answer.get("event") != "commit":
            # The caller is gone (or gave up) before recording us: leave nothing running.
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
            os._exit(1)
        # The name's lock and the copy of our record (see ``records.store``): kept open,
        # close-on-exec, for as long as we live.  Nothing else is done with them.
        # Then, when the commit says so, the service's state file (a restart policy:
        # linux.supervisor writes it) and the caller's pidfd (end_with_caller, watched).
        caller = kept.pop() if answer.get("watch") and len(kept) >= 3 else None
        state_fd = kept.pop() if answer.get("state") and len(kept) >= 3 else None
        _KEPT.extend(kept)
        supervised = None
        if service is not None:
            policy, most = supervisor.parse_policy(plan.get("restart") or "no")
            supervised = supervisor.Service(
                lambda: _spawn_service(plan, env, cwd, out_fd, err_fd), service,
                policy=policy, most=most, log_fd=err_fd, state_fd=state_fd)
            if plan.get("health"):
                supervised.health = health.Health(
                    plan["health"], env, cwd, own_network=bool(network.get("namespace")),
                    note=lambda text: supervised.note(text) if supervised else None,
                    changed=lambda: supervised.write_state() if supervised else None)
        if control is not None:
            with contextlib.suppress(OSError):
                wire.send_message(control, {"event": "committed"})
            control.close()
    except BaseException as err:  # report anything unexpected rather than vanish
        with contextlib.suppress(Exception):
            wire.send_message(channel, {"event": "error", "step": "init",
                                        "message": f"{type(err).__name__}: {err}",
                                        "errno": getattr(err, "errno", None), "path": None})
        os._exit(1)
    _supervise(wakeup, channel, supervised, set(report["helpers"]), caller)


def _open_cgroup_roots(paths: Any) -> dict[str, int]:
    roots: dict[str, int] = {}
    for path in paths:
        try:
            roots[path] = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            for fd in roots.values():
                os.close(fd)
            raise container.SetupError("open the cgroup hierarchies", err.strerror or str(err),
                                       errno=err.errno, path=path) from err
    return roots


def _enter_network_namespace(channel: socket.socket, host_side: bool) -> None:
    """A network namespace of our own (``lo`` up); with ``host_side``, hand it to the caller.

    The caller's side makes the veth pairs with their inner ends in it, or
    starts pasta for it (it gets the namespace as a descriptor: our PID may not
    be in its view).
    """
    try:
        netns.enter_new_network_namespace()
    except OSError as err:
        raise container.SetupError("make the network namespace", err.strerror or "",
                                   errno=err.errno) from err
    if host_side:
        # With the user namespace that owns it (pasta joins both).
        fds = [os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
               for kind in ("net", "user")]
        try:
            wire.send_message(channel, {"event": "netns"}, fds)
        finally:
            for fd in fds:
                os.close(fd)


def _await_network(channel: socket.socket) -> None:
    message, fds = wire.recv_message(channel)
    for fd in fds:
        os.close(fd)
    if message is None or message.get("event") != "network":
        os._exit(1)  # the caller gave up (or is gone) before the instance ran anything
    for interface in message.get("interfaces") or []:
        try:
            netns.configure([interface])
        except OSError as err:
            raise container.SetupError(f"configure {interface.get('ifname')}",
                                       err.strerror or str(err), errno=err.errno) from err


def _await_cgroup(channel: socket.socket, roots: dict[str, int]) -> None:
    message, fds = wire.recv_message(channel)
    for fd in fds:
        os.close(fd)
    if message is None or message.get("event") != "cgroup":
        os._exit(1)  # the caller gave up (or is gone) before the instance ran anything
    try:
        cgroupdirs.join(message.get("procs") or (), roots)
    except OSError as err:
        raise container.SetupError("join the instance's cgroup", err.strerror or str(err),
                                   errno=err.errno, path=err.filename) from err


def _prepare_process() -> int:
    """Own session, quiet stdio, signal wake-ups; return the wake-up pipe's read end."""
    os.setsid()
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    with contextlib.suppress(OSError):
        syscalls.set_process_title("instancelib-spare")
    gc.disable()
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    # PID 1 only receives signals it has a handler for; a no-op Python handler
    # plus the wake-up fd turns each signal into a byte our loop can poll.
    for sig in _HANDLED:
        signal.signal(sig, _ignore)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    return read_end


def _name_process(name: str, user: str) -> None:
    """Show the instance in ``ps``: ``instancelib-init: USER [NAME]``."""
    # The name (comm) is what callers check before they signal or enter us.
    syscalls.prctl_set_name(procfs.INIT_COMM)
    with contextlib.suppress(OSError):
        syscalls.set_process_title(f"instancelib-init: {user} [{name}]")


def _protect_from_oom_killer() -> None:
    """Make the OOM killer pick the instance's processes before its PID 1.

    Killing PID 1 would end the whole instance; under a memory limit the
    culprit should go, and the instance stay manageable.  Done after the
    service is spawned: children inherit the setting.  Only root may lower it.
    """
    with contextlib.suppress(OSError):
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"-999")
        finally:
            os.close(fd)


def _ignore(_signum: int, _frame: object) -> None:
    return None


def _compute_environment(plan: dict[str, Any], out_fd: int, err_fd: int) -> dict[str, str]:
    env_plan = plan["env"]
    env = dict(env_plan["base"])
    if envscripts.has_env_scripts():
        try:
            env = envscripts.source_env_scripts(env, stdout=out_fd, stderr=err_fd,
                                                timeout=plan["timeout"])
        except envscripts.EnvScriptError as err:
            raise container.SetupError("source environment scripts", str(err)) from err
    env = envscripts.apply_overrides(env, env_plan["overrides"])
    env.update(env_plan["runtime"])
    return env


def _choose_cwd(candidates: list[str]) -> str:
    for path in candidates:
        if os.path.isdir(path):
            return path
    return "/"


def _service_argv(plan: dict[str, Any]) -> list[str] | None:
    """The command for the start/run script; None for an idle instance."""
    command = plan["command"]
    args = list(command["args"])
    if command["kind"] == "idle":
        return None
    script = RUNSCRIPT if command["kind"] == "run" else STARTSCRIPT
    if not os.path.lexists(script):
        if command["kind"] == "run":
            # As Singularity: an image without a runscript runs /bin/sh.
            return ["/bin/sh", *args]
        return None
    if os.access(script, os.X_OK):
        return [script, *args]
    return ["/bin/sh", script, *args]


def _spawn_service(plan: dict[str, Any], env: dict[str, str], cwd: str, out_fd: int,
                   err_fd: int) -> int | None:
    argv = _service_argv(plan)
    if argv is None:
        return None
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out_fd, 1),
        (os.POSIX_SPAWN_DUP2, err_fd, 2),
    ]
    step = f"exec {argv[0]}" if argv[0] in (STARTSCRIPT, RUNSCRIPT, "/bin/sh") else "exec"
    os.chdir(cwd)
    try:
        try:
            return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True,
                                  setsigmask=(), setsigdef=(*envscripts.RESET_SIGNALS, *_HANDLED))
        except OSError as err:
            if err.errno == errno.ENOEXEC and argv[0] != "/bin/sh":  # no #! line
                return os.posix_spawn("/bin/sh", ["/bin/sh", *argv], env, file_actions=actions,
                                      setsid=True, setsigmask=(),
                                      setsigdef=(*envscripts.RESET_SIGNALS, *_HANDLED))
            raise
    except OSError as err:
        raise container.SetupError(step, _explain_exec_error(argv[0], err), errno=err.errno,
                                   path=argv[0]) from err
    finally:
        os.chdir("/")


def _explain_exec_error(path: str, err: OSError) -> str:
    message = err.strerror or str(err)
    if err.errno == errno.ENOENT and os.path.exists(path):
        interpreter = _shebang(path)
        if interpreter:
            return f"{message} (its interpreter {interpreter} is missing from the image)"
    if err.errno == errno.ENOENT and path == "/bin/sh":
        return f"{message} (the image has no /bin/sh)"
    return message


def _shebang(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if first.startswith(b"#!"):
        parts = first[2:].split()
        return parts[0].decode(errors="replace") if parts else None
    return None


def _supervise(wakeup: int, channel: socket.socket | None,
               service: supervisor.Service | None, helpers: set[int],
               caller: int | None = None) -> None:
    """The resident loop: reap, forward signals, restart the service by its policy, exit
    after a stop once all is gone.

    ``helpers`` (squashfuse) are our children too, but do not keep us up:
    they serve the instance and end with it.  ``caller`` is a pidfd of the
    process that started us (``end_with_caller``): readable once it has
    exited, and then the whole instance ends at once.
    """
    poller = select.poll()
    poller.register(wakeup, select.POLLIN)
    if channel is not None:
        poller.register(channel.fileno(), select.POLLIN)
    if caller is not None:
        poller.register(caller, select.POLLIN)
    stopping = False
    stop_with_service = False  # the service was running when the stop signal came
    linger: int | None = None  # poll timeout (ms) while exec'd commands finish after a stop
    check = service.health if service is not None else None
    while True:
        waits = [w for w in (service.wait() if service is not None else None,
                             check.wait() if check is not None else None) if w is not None]
        timeout = linger if not waits else min(linger or 60_000, int(min(waits) * 1000) + 1)
        watched = check.fds() if check is not None else []
        for fd, events in watched:
            poller.register(fd, events)
        try:
            woken = poller.poll(timeout)
        finally:
            for fd, _events in watched:
                poller.unregister(fd)
        for fd, _events in woken:
            if check is not None and any(fd == w for w, _ in watched):
                check.ready(fd)
            elif fd == wakeup:
                for signum in os.read(wakeup, 256):
                    if signum == signal.SIGCHLD:
                        continue  # reaped below, whatever woke us
                    if signum in _STOP_SIGNALS:
                        if not stopping:
                            stopping = True
                            stop_with_service = service is not None and service.pid is not None
                            if service is not None:
                                service.stop()
                            if check is not None:
                                check.stop()
                        with contextlib.suppress(OSError):
                            os.kill(-1, signum)
                    elif signum == RESTART_SIGNAL:
                        if service is not None and not stopping:
                            service.restart_now()
                    elif service is not None and service.pid is not None:
                        with contextlib.suppress(OSError):
                            os.killpg(service.pid, signum)
            elif fd == caller:
                with contextlib.suppress(OSError):
                    os.kill(-1, signal.SIGKILL)
                _leave()
            elif channel is not None:
                # The caller is done with the start-up channel (or died): drop it.
                poller.unregister(fd)
                channel.close()
                channel = None
        children_left, exited = _reap()
        helpers.difference_update(exited)
        if children_left and helpers:
            children_left = bool(set(procfs.children_of(1)) - helpers)
        if check is not None:
            for pid in [pid for pid in exited if check.exited(pid, exited[pid])]:
                del exited[pid]
            if not stopping:
                check.tick()
        if service is not None and service.pid is not None and service.pid in exited:
            service.exited(exited[service.pid])
            if channel is not None:
                with contextlib.suppress(OSError):
                    wire.send_message(channel, {
                        "event": "service_exit", "status": service.exit_code,
                        "restarting": service.pid is not None or service.wait() is not None})
        if service is not None and not stopping:
            service.restart_if_due()
        running = service is not None and service.pid is not None
        if stopping and stop_with_service and not running:
            _leave()  # the kernel ends whatever else is left (jobs ignoring SIGINT)
        if stopping and not children_left:
            # No service: exit once no process is left, commands run by exec included
            # (they are not our children: their exit does not wake us, hence the poll).
            if not _others_alive(helpers):
                _leave()
            linger = _LINGER_POLL_MS


def _leave() -> None:
    """Exit after a stop.  Our veths are left to the kernel's tear-down of the namespace,
    which removes them (and their host ends) in one batch: deleting them one by one
    first made a bridge instance's stop 20 ms slower (benchmarks/network.py)."""
    os._exit(0)


def _others_alive(helpers: set[int]) -> bool:
    """Whether a process other than us (and the helpers) still runs in our PID namespace.

    Only our own /proc can tell (where it is the host's, bound for an ordinary
    user, we cannot: then nothing is waited for).
    """
    try:
        if os.readlink("/proc/self") != "1":
            return False
        for entry in os.listdir("/proc"):
            if entry.isdigit() and entry != "1" and int(entry) not in helpers:
                stat = procfs.read_stat(int(entry))
                if stat is not None and stat.running:
                    return True
    except OSError:
        return False
    return False


def _reap() -> tuple[bool, dict[int, int]]:
    """Reap every exited child; return (any children left, {pid: exit status})."""
    exited: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False, exited
        if pid == 0:
            return True, exited
        exited[pid] = os.waitstatus_to_exitcode(status)
