"""The async face: ``AsyncInstance`` and ``AsyncInstanceRegistry``, over the same core.

As httpx has ``Client`` and ``AsyncClient``, instancelib has ``Instance`` and
``AsyncInstance``: the same methods, awaited.  Nothing is re-implemented:
starts and stops run the sync core in a helper process (``offload``: their
Python work holds another interpreter's GIL), other calls that must block (a
stats reading, an exec) in a worker thread; what waits on the kernel is awaited on the event loop
itself (the end of PID 1 through its pidfd, a command's pipes and status,
a followed log), so no call holds the loop.  Cancelling a call undoes what
it began: a cancelled ``start`` stops the instance it was starting, a
cancelled ``exec`` kills its command and reaps it.

    from instancelib.aio import AsyncInstance

    async with AsyncInstance.start(image, "web") as web:
        result = await web.exec(["cat", "/etc/os-release"])
        async for line in web.logs(follow=True):
            ...

``await AsyncInstance.start(...)`` gives the instance without the ``with``.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import contextvars
import os
import queue
import signal as signals
import threading
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

from instancelib import offload
from instancelib.cgroups import Stats
from instancelib.errors import NotFound, Timeout
from instancelib.foreground import Image
from instancelib.image import Image as BaseImage
from instancelib.instance import Instance
from instancelib.logs import FOLLOW_POLL, LogReader, check_tail
from instancelib.process import ExecResult, InstanceProcess
from instancelib.records import InstanceRecords
from instancelib.registry import InstanceRegistry
from instancelib.starting import ABANDON
from instancelib.stopping import release_ended

__all__ = ["AsyncInstance", "AsyncInstanceRegistry"]

T = TypeVar("T")


class _Workers(concurrent.futures.Executor):
    """Threads for the core's blocking calls, started by a thread of their own.

    ``asyncio.to_thread`` starts pool threads on the event loop's thread, and
    ``Thread.start`` waits until the new thread runs: milliseconds of the loop's
    time when other threads are busy.  Here the loop's thread only queues a call
    (and, when no worker is free, asks the starter thread for one more, up to
    ``most``); the starter itself is started once per process.
    """

    def __init__(self, most: int = 16) -> None:
        self._most = most
        self._reset()
        # A forked child has none of the parent's threads: it starts its own.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._wanted = threading.Semaphore(0)
        self._threads = 0
        self._free = 0  # workers waiting for a job, less the jobs queued for them
        self._starter: threading.Thread | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._free > 0:
                self._free -= 1
            elif self._threads < self._most:
                self._threads += 1
                self._wanted.release()
            if self._starter is None:
                self._starter = threading.Thread(target=self._start_workers,
                                                 name="instancelib-aio-starter", daemon=True)
                self._starter.start()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _start_workers(self) -> None:
        number = 0
        while True:
            self._wanted.acquire()
            number += 1
            threading.Thread(target=self._work, name=f"instancelib-aio-{number}",
                             daemon=True).start()

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self._jobs.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as err:  # handed to the awaiting task
                    future.set_exception(err)
            with self._lock:
                self._free += 1


_WORKERS = _Workers()


def _offload(function: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
    """A core call on a worker thread (with the caller's context variables), as a future."""
    context = contextvars.copy_context()
    return asyncio.wrap_future(_WORKERS.submit(context.run, function, *args, **kwargs))


async def _settled(task: asyncio.Future[T]) -> T:
    """``task``'s result; a cancellation waits for it to end (a core call cannot be
    interrupted, and a stop is not undone) and then goes on."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.shield(task)
        raise


async def _helped(future: concurrent.futures.Future[T]) -> T:
    """The helper process's answer (see ``_settled``)."""
    return await _settled(asyncio.wrap_future(future))


async def _thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking core call in a worker thread (see ``_settled``)."""
    return await _settled(_offload(function, *args, **kwargs))


class _Starting:
    """What ``AsyncInstance.start`` returns: awaitable, and an async context manager."""

    def __init__(self, image: Image | str | os.PathLike[str], name: str,
                 options: dict[str, Any]) -> None:
        self._image, self._name, self._options = image, name, options
        self._started: AsyncInstance | None = None

    def __await__(self) -> Generator[Any, None, AsyncInstance]:
        return self._start().__await__()

    async def __aenter__(self) -> AsyncInstance:
        self._started = await self._start()
        return self._started

    async def __aexit__(self, *exc_info: object) -> None:
        if self._started is not None:
            await self._started.stop()

    async def _start(self) -> AsyncInstance:
        if _by_helper(self._options):
            registry = self._options.get("registry")
            spec = offload.registry_spec(registry)
            options = {key: value for key, value in self._options.items() if key != "registry"}
            sent = None if spec is None else offload.call(
                "start", (self._image, self._name, spec, options))
            if sent is not None:
                return await _started_by_helper(*sent, registry)
        abandon = threading.Event()
        token = ABANDON.set(abandon)  # the worker thread gets a copy of this context
        try:
            task = _offload(Instance.start, self._image, self._name, **self._options)
        finally:
            ABANDON.reset(token)
        try:
            return AsyncInstance(await asyncio.shield(task))
        except asyncio.CancelledError:
            # The start goes on in its thread: told to give up (a readiness wait ends at
            # once), and once it is done whatever it made is stopped: a cancelled start
            # leaves nothing.
            abandon.set()
            await asyncio.shield(_undo(task))
            raise


async def _undo(task: asyncio.Future[Instance]) -> None:
    try:
        instance = await task
    except Exception:  # the start failed by itself: its own clean-up ran
        return
    await _offload(instance.stop, force=True)


def _by_helper(options: Mapping[str, Any]) -> bool:
    """Whether a start may run in the helper process (see ``offload``): not one that names
    its caller, and only once the helper answers (the first call starts it)."""
    if options.get("end_with_caller") or options.get("cgroup_parent") == "caller":
        return False
    return offload.available(_WORKERS.submit)


async def _started_by_helper(future: concurrent.futures.Future[Any], number: int,
                             registry: Any) -> AsyncInstance:
    task = asyncio.wrap_future(future)
    if registry is None:
        registry = InstanceRecords(on_ended=release_ended)  # as Instance.start's default

    def instance(record: Any) -> AsyncInstance:
        return AsyncInstance(Instance._from_record(record, registry))

    try:
        return instance(await asyncio.shield(task))
    except asyncio.CancelledError:
        offload.abandon(number)  # as the thread's: the readiness wait ends, the start is undone

        async def undo() -> None:
            try:
                started = instance(await task)
            except Exception:  # the start failed by itself: its own clean-up ran
                return
            await started.stop(force=True)

        await asyncio.shield(undo())
        raise


class AsyncInstance:
    """An instance, awaited (see the module doc); ``sync`` is the ``Instance`` behind it.

    Its attributes read as ``Instance``'s do; its calls are coroutines with the
    same arguments, results and errors.
    """

    def __init__(self, instance: Instance) -> None:
        self.sync = instance

    @classmethod
    def start(cls, image: Image | str | os.PathLike[str], name: str,
              **options: Any) -> _Starting:
        """Start ``image`` as ``name`` (``Instance.start``'s options): ``await`` it, or use
        it in ``async with`` (the instance is stopped at the end of the block)."""
        return _Starting(image, name, options)

    # -- what Instance has as attributes ------------------------------------------------------

    @property
    def name(self) -> str:
        return self.sync.name

    @property
    def pid(self) -> int:
        return self.sync.pid

    @property
    def ip(self) -> str:
        return self.sync.ip

    @property
    def image(self) -> BaseImage:
        return self.sync.image

    @property
    def options(self) -> dict[str, Any]:
        return self.sync.options

    def is_running(self) -> bool:
        """Whether PID 1 is still up (a look at ``/proc``: it does not block)."""
        return self.sync.is_running()

    def __repr__(self) -> str:
        return f"<Async{repr(self.sync)[1:]}"

    def _repr_html_(self) -> str:
        return self.sync._repr_html_()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        self.sync._repr_pretty_(printer, cycle)

    async def __aenter__(self) -> AsyncInstance:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- calls --------------------------------------------------------------------------------

    async def exec(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                   cwd: str | None = None, input: bytes | str | None = None,
                   timeout: float | None = None, text: bool = True) -> ExecResult:
        """``Instance.exec`` on a worker thread (one hop: the command's pipes are read there,
        in ``select``, holding nothing of the loop's); cancelled, timed out or interrupted,
        the command is killed and reaped."""
        started: list[InstanceProcess] = []
        given_up = threading.Event()

        def run_to_end() -> tuple[Any, Any, int]:
            process = self.sync.popen_captured(argv, env=env, cwd=cwd,
                                               with_input=input is not None)
            started.append(process)
            if given_up.is_set():  # cancelled while it was being started
                process.kill()
            out, err = process.finish(input, timeout)
            return out, err, _code(process)

        task = _offload(run_to_end)
        try:
            out, err, code = await asyncio.shield(task)
        except asyncio.CancelledError:
            given_up.set()
            for process in started:
                process.kill()  # its pipes close: the worker's communicate returns
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
            raise
        if text:
            return ExecResult(code, out.decode(errors="replace"), err.decode(errors="replace"))
        return ExecResult(code, out, err)

    async def run(self, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                  input: bytes | str | None = None, timeout: float | None = None,
                  text: bool = True) -> ExecResult:
        """``Instance.run``: the image's runscript, awaited as ``exec``."""
        return await self.exec(self.sync.run_command(args), env=env, input=input,
                               timeout=timeout, text=text)

    async def stop(self, **options: Any) -> None:
        """``Instance.stop`` (same options), in the helper process or a worker thread."""
        spec = offload.registry_spec(self.sync.registry)
        if spec is not None and offload.available(_WORKERS.submit):
            sent = offload.call("stop", (spec, self.sync._record, options))
            if sent is not None:
                await _helped(sent[0])
                return
        await _thread(self.sync.stop, **options)

    async def kill(self, signal: int = signals.SIGKILL) -> None:
        """``Instance.kill``."""
        self.sync.kill(signal)

    async def pause(self) -> None:
        await _thread(self.sync.pause)

    async def resume(self) -> None:
        await _thread(self.sync.resume)

    async def wait(self, timeout: float | None = None) -> None:
        """Until the instance ends (its PID 1's pidfd, watched by the loop).

        Raises:
            Timeout: still running after ``timeout`` seconds.
        """
        try:
            pidfd = self.sync._pidfd()
        except NotFound:
            self.sync._forget()
            return
        try:
            await asyncio.wait_for(_readable(pidfd), timeout)
        except asyncio.TimeoutError:  # (not the builtin one before Python 3.11)
            raise Timeout(f"still running after {timeout:g} s", name=self.name,
                          pid=self.pid) from None
        finally:
            os.close(pidfd)
        await _thread(self.sync._forget)

    async def stats(self) -> Stats:
        """One reading (``Instance.stats()``)."""
        return await _thread(self.sync.stats)

    async def stream_stats(self, interval: float = 1.0) -> AsyncIterator[Stats]:
        """A reading every ``interval`` seconds until the instance ends."""
        while True:
            try:
                yield await _thread(self.sync.stats)
            except NotFound:
                return
            try:
                await self.wait(interval)
                return
            except Timeout:
                continue

    async def logs(self, *, stderr: bool = False, follow: bool = False,
                   tail: int | None = None, all: bool = False) -> AsyncIterator[str]:
        """``Instance.logs``'s lines; with ``follow``, new ones until the instance ends
        (or the caller stops iterating)."""
        check_tail(tail)
        reader = await _thread(LogReader, self.sync, stderr=stderr, everything=all)
        try:
            first = reader.lines() if follow else reader.lines() + reader.rest()
            if tail is not None:
                first = first[len(first) - tail:] if tail else []
            for line in first:
                yield line
            if not follow:
                return
            while True:
                ended = not self.sync.is_running()
                for line in reader.lines():
                    yield line
                if ended:
                    for line in reader.rest():
                        yield line
                    return
                await asyncio.sleep(FOLLOW_POLL)
        finally:
            reader.close()


class AsyncInstanceRegistry:
    """``InstanceRegistry``, awaited: ``list``, ``get`` and ``stop`` in a worker thread;
    ``sync`` is the registry behind it (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sync = kwargs.pop("registry", None) or InstanceRegistry(*args, **kwargs)

    async def list(self, pattern: str = "*") -> builtins.list[AsyncInstance]:
        return [AsyncInstance(i) for i in await _thread(self.sync.list, pattern)]

    async def get(self, name: str) -> AsyncInstance:
        return AsyncInstance(await _thread(self.sync.get, name))

    async def stop(self, pattern: str = "*", **options: Any) -> builtins.list[str]:
        spec = offload.registry_spec(self.sync)
        if spec is not None and spec[0] == "registry" and offload.available(_WORKERS.submit):
            sent = offload.call("stop_pattern", (spec, pattern, options))
            if sent is not None:
                return builtins.list(await _helped(sent[0]))
        return builtins.list(await _thread(self.sync.stop, pattern, **options))


def _code(process: InstanceProcess) -> int:
    return process.returncode if process.returncode is not None else -1


async def _readable(fd: int) -> None:
    """Until ``fd`` is readable (a pidfd: its process has ended)."""
    await _wait_fd(asyncio.get_running_loop(), fd, write=False)


async def _wait_fd(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)
