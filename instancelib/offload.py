"""The async face's helper process: starts and stops run in another interpreter.

A start or a stop is a few milliseconds of Python (the plan, the claim, the
record, the cgroup); in a worker thread of the caller's process that work holds
the caller's GIL, which the event loop's thread then waits for: with 20 starts
at once the loop woke up to 5 ms late.  Here that work runs in a helper, a
Python process of the caller's own, so the caller only pickles a request and
unpickles the record that comes back (tens of microseconds each).

- The helper is started (in the background) by the first ``AsyncInstance``
  start or stop of a process; until it has answered, calls run on threads as
  before.  ``INSTANCELIB_AIO_HELPER=0`` keeps every call on threads.
- Each request carries what a start reads from its process: the environment,
  the working directory, the umask and the ``instancelib`` logger's level.
  The helper runs requests of one such context at once and lets one with another
  context in only when those have ended.
- What the helper logs comes back and is logged by the caller's ``instancelib``
  logger; errors come back as the same exceptions.
- A start that names its caller (``end_with_caller``, ``cgroup_parent="caller"``),
  a registry the helper cannot rebuild, or options that do not pickle run on
  threads: the helper would be the wrong caller.
- The helper ends when the caller's end of the socket closes (the caller exited),
  after finishing what it was asked; a forked caller starts its own.

The socket is a ``socketpair`` between a process and its own child: pickles
cross it only between the two.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import contextvars
import itertools
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from instancelib.errors import StartError
from instancelib.linux import wire
from instancelib.records import InstanceRecords

__all__ = ["abandon", "available", "call", "enabled", "ready", "registry_spec", "shutdown"]

log = logging.getLogger("instancelib")

_BOOTSTRAP = (
    "import json, sys\n"
    "sys.path[:] = json.loads(sys.argv[1])\n"
    "from instancelib.offload import serve\n"
    "serve(int(sys.argv[2]))\n"
)
_MESSAGE = 200 << 10  # a pickle larger than this goes by thread (the datagram's bound)
_JOBS = 32  # requests the helper runs at once
_EXIT_WAIT = 5.0  # seconds a closing caller waits for its helper to end


def enabled() -> bool:
    """Whether the async face may use a helper (``INSTANCELIB_AIO_HELPER`` is not ``0``)."""
    return os.environ.get("INSTANCELIB_AIO_HELPER", "1") != "0"


# -- the caller's side ------------------------------------------------------------------------


class _Helper:
    """A running helper, the socket to it and the calls waiting for its answers."""

    def __init__(self) -> None:
        ours, theirs = wire.socketpair()
        path = [entry or os.getcwd() for entry in sys.path]
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, json.dumps(path), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if os.environ.get("INSTANCELIB_DEBUG") else subprocess.DEVNULL,
                start_new_session=True)  # a Ctrl-C is for the caller, who cancels
        finally:
            theirs.close()
        self.sock = ours
        self.owner_pid = os.getpid()
        self._lock = threading.Lock()
        self._waiting: dict[int, concurrent.futures.Future[Any]] = {}
        self._numbers = itertools.count(1)
        ready = self.sock.recv(64)
        if ready != b"ready":
            self.close()
            raise StartError("the async face's helper process did not start")
        threading.Thread(target=self._read, name="instancelib-aio-helper", daemon=True).start()

    def send(self, number: int, data: bytes) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._waiting[number] = future
            try:
                self.sock.sendall(data)
            except OSError:
                del self._waiting[number]
                raise
        return future

    def abandon(self, number: int) -> None:
        with self._lock, contextlib.suppress(OSError):
            self.sock.sendall(pickle.dumps((number, "abandon", None)))

    def number(self) -> int:
        return next(self._numbers)

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(_MESSAGE + 4096)
                if not data:
                    break
                number, kind, value = pickle.loads(data)
                if kind == "log":
                    level, name, text = value
                    logging.getLogger(name).log(level, "%s", text)
                    continue
                with self._lock:
                    future = self._waiting.pop(number, None)
                if future is None:
                    continue
                if kind == "ok":
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (OSError, pickle.UnpicklingError, ValueError, EOFError) as err:
            log.debug("the async face's helper: %s", err)
        finally:
            self._ended()

    def _ended(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        _forget(self)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)  # it ends once its socket has closed
        for future in waiting.values():
            future.set_exception(StartError(
                "the async face's helper process ended before it answered "
                "(see the registry: a start it was running may have been left half-made)"))
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv (close does not)
        with contextlib.suppress(OSError):
            self.sock.close()


_state_lock = threading.Lock()
_helper: list[_Helper] = []   # the ready helper, when there is one
_launching: list[bool] = []   # a launch is under way


def _forget(helper: _Helper | None = None) -> None:
    with _state_lock:
        if helper is None or (_helper and _helper[0] is helper):
            _helper.clear()


def _after_fork_in_child() -> None:
    # The parent's helper is the parent's: this copy of its socket is closed, never used
    # (not shut down: that would end the parent's connection too).
    for helper in _helper:
        with contextlib.suppress(OSError):
            helper.sock.close()
    _helper.clear()
    _launching.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def available(launch: Callable[[Callable[[], None]], object]) -> bool:
    """Whether a ready helper answers now; if none is and none is being started,
    ``launch`` is given the function that starts one (to run off the loop's thread)."""
    if not enabled():
        return False
    with _state_lock:
        if _helper and _helper[0].owner_pid == os.getpid():
            return True
        if _launching:
            return False
        _launching.append(True)
    launch(_launch)
    return False


def shutdown() -> None:
    """End this process's helper (at exit; tests): its socket is closed, and it is waited for
    while it finishes what it runs and its fork-server removes its spare's cgroups."""
    with _state_lock:
        helpers = [h for h in _helper if h.owner_pid == os.getpid()]
        _helper.clear()
    for helper in helpers:
        helper.close()
        try:
            helper.process.wait(_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            log.debug("the async face's helper (PID %d) is still finishing", helper.process.pid)


atexit.register(shutdown)


def ready() -> bool:
    """Whether a helper answers now (without starting one)."""
    with _state_lock:
        return bool(_helper) and _helper[0].owner_pid == os.getpid()


def _launch() -> None:
    try:
        helper = _Helper()
    except (OSError, StartError) as err:
        log.debug("no helper process for the async face (calls stay on threads): %s", err)
        return  # _launching stays set: no second try in this process
    with _state_lock:
        _helper[:] = [helper]
        _launching.clear()


def registry_spec(registry: InstanceRecords | None) -> tuple[Any, ...] | None:
    """What rebuilds ``registry`` in the helper, or None where it cannot be rebuilt."""
    from instancelib.registry import InstanceRegistry  # noqa: PLC0415
    from instancelib.stopping import release_ended  # noqa: PLC0415

    if registry is None:
        return ("default",)
    kind = type(registry)
    ended = registry._on_ended
    if kind is InstanceRegistry and ended is release_ended:
        return ("registry", str(registry.root), registry.owner_uid, registry.layout)
    if kind is InstanceRecords and ended in (None, release_ended):
        return ("records", str(registry.root), registry.owner_uid, registry.layout,
                ended is release_ended)
    return None


def call(op: str, payload: tuple[Any, ...]) -> tuple[concurrent.futures.Future[Any], int] | None:
    """Send ``op`` to the ready helper: its future and request number, or None when it
    cannot go there (no helper, or the request does not pickle within a datagram)."""
    with _state_lock:
        helper = _helper[0] if _helper else None
    if helper is None:
        return None
    context = (dict(os.environ), os.getcwd(), _umask(), log.getEffectiveLevel())
    number = helper.number()
    try:
        data = pickle.dumps((number, op, (context, *payload)))
    except Exception:  # (a lambda, a lock... in the options: threads do it)
        return None
    if len(data) > _MESSAGE:
        return None
    try:
        return helper.send(number, data), number
    except OSError:
        _forget(helper)
        return None


def abandon(number: int) -> None:
    """Tell the helper that request ``number``'s caller gave up (a start's readiness wait ends)."""
    with _state_lock:
        helper = _helper[0] if _helper else None
    if helper is not None:
        helper.abandon(number)


def _umask() -> int:
    # os.umask only sets; /proc tells without a change (the race of set-and-restore).
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


# -- the helper's side ------------------------------------------------------------------------


class _Contexts:
    """Requests of one context (environment, directory, umask, log level) run at once."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._current: tuple[Any, ...] | None = None
        self._running = 0

    @contextlib.contextmanager
    def entered(self, context: tuple[Any, ...]) -> Any:
        with self._changed:
            while self._current != context and self._running:
                self._changed.wait()
            if self._current != context:
                environment, directory, umask, level = context
                os.environ.clear()
                os.environ.update(environment)
                os.chdir(directory)
                os.umask(umask)
                log.setLevel(level)
                self._current = context
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()


class _Forward(logging.Handler):
    """The helper's log records, sent to the caller."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._send(pickle.dumps((0, "log", (record.levelno, record.name,
                                                record.getMessage()))))


def _registry(spec: tuple[Any, ...]) -> InstanceRecords | None:
    from instancelib.registry import InstanceRegistry  # noqa: PLC0415
    from instancelib.stopping import release_ended  # noqa: PLC0415

    if spec[0] == "default":
        return None
    user = None if spec[2] == os.geteuid() else spec[2]
    if spec[0] == "registry":
        return InstanceRegistry(spec[1], user=user, layout=spec[3])
    return InstanceRecords(spec[1], user=user, layout=spec[3],
                           on_ended=release_ended if spec[4] else None)


def _run(op: str, payload: tuple[Any, ...], abandon: threading.Event) -> Any:
    from instancelib.instance import Instance  # noqa: PLC0415
    from instancelib.starting import ABANDON  # noqa: PLC0415

    if op == "start":
        image, name, spec, options = payload
        ABANDON.set(abandon)
        started = Instance.start(image, name, registry=_registry(spec), **options)
        return started._record
    if op == "stop":
        spec, record, options = payload
        registry = _registry(spec)
        if registry is None:
            registry = InstanceRecords()
        Instance._from_record(record, registry).stop(**options)
        return None
    if op == "stop_pattern":
        spec, pattern, options = payload
        from instancelib.registry import InstanceRegistry  # noqa: PLC0415

        registry = _registry(spec)
        if not isinstance(registry, InstanceRegistry):
            raise StartError("stop by pattern needs an InstanceRegistry")
        return registry.stop(pattern, **options)
    raise StartError(f"unknown request {op!r} to the async face's helper")


def serve(fd: int) -> None:
    """The helper's main loop: requests from the socket ``fd``, run on threads."""
    import instancelib  # noqa: PLC0415
    from instancelib import warmup  # noqa: PLC0415

    sock = socket.socket(fileno=fd)
    send_lock = threading.Lock()

    def send(data: bytes) -> None:
        with send_lock:
            sock.sendall(data)

    log.addHandler(_Forward(send))
    log.propagate = False
    instancelib.Instance  # noqa: B018 (the start path, imported before the first request)
    warmup.begin()
    send(b"ready")
    contexts = _Contexts()
    abandons: dict[int, threading.Event] = {}

    def job(number: int, op: str, context: tuple[Any, ...], payload: tuple[Any, ...]) -> None:
        try:
            with contexts.entered(context):
                # A context of its own: the ABANDON a start sets stays with that start.
                value = contextvars.Context().run(_run, op, payload, abandons[number])
                reply = (number, "ok", value)
        except BaseException as err:  # (handed to the caller)
            reply = (number, "error", err)
        finally:
            abandons.pop(number, None)
        try:
            data = pickle.dumps(reply)
        except Exception:  # (an error that does not pickle: said in words)
            data = pickle.dumps((number, "error", StartError(f"{reply[2]!r}")))
        with contextlib.suppress(OSError):
            send(data)

    with concurrent.futures.ThreadPoolExecutor(_JOBS, "instancelib-helper") as pool:
        while True:
            try:
                data = sock.recv(_MESSAGE + 4096)
            except OSError:
                break
            if not data:
                break  # the caller has gone: what runs is finished, then the pool ends
            number, op, payload = pickle.loads(data)
            if op == "abandon":
                event = abandons.get(number)
                if event is not None:
                    event.set()
                continue
            abandons[number] = threading.Event()
            context, *rest = payload
            pool.submit(job, number, op, context, tuple(rest))
