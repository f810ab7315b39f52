"""The workers' side: the plugin, each worker's registry, and what the client asks of them.

Each worker gets a registry of its own, ``BASE/<host>/w.<worker name>.<worker PID>``
(``BASE``: the plugin's ``root``, else ``$INSTANCELIB_HOME/dask`` or
``~/.instancelib/dask``), and holds an exclusive ``flock`` on its ``worker.lock``
for as long as it lives.  A registry whose lock nobody holds belongs to a worker that
has ended (closed with ``keep=True``, or killed): every live worker on that host
reports its instances (``worker_alive`` False) and can stop them.  Which worker is
alive is the kernel's answer (the lock), not a file's.

The client calls the functions here through ``Client.run`` (out of band: no task
slot is taken, and a busy worker still answers).  They are coroutines that run the
sync core in a thread, so the worker's event loop (its heartbeats) never waits, and
they return ``("ok", value)`` or ``("error", exception)`` with the worker's address set
on the exception, so a user's error comes back typed and is not logged as a crash.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from distributed import WorkerPlugin

from instancelib.errors import (
    ImageError,
    InstanceError,
    InvalidArgument,
    NotFound,
    RegistryError,
    StartError,
    Unsupported,
)
from instancelib.instance import Instance
from instancelib.records import default_root
from instancelib.registry import InstanceRegistry

from .values import ClusterInstance, ClusterStats

__all__ = ["PLUGIN_NAME", "InstancelibPlugin", "WorkerHome"]

log = logging.getLogger("instancelib")

T = TypeVar("T")
PLUGIN_NAME = "instancelib"
_LOCK = "worker.lock"
_INFO = "worker.json"
_INFO_MAX = 4096
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def base_directory(root: str | None) -> Path:
    """Where the workers' registries live (per host below it)."""
    if root is not None:
        return Path(root).absolute()
    configured = os.environ.get("INSTANCELIB_DASK_HOME")
    return Path(configured).absolute() if configured else default_root() / "dask"


def _own_directory(path: Path) -> None:
    """Make ``path`` (mode 0700) or check the one there: a directory of ours, not a link,
    not writable by others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise RegistryError("is not a directory (a link?)", path=str(path))
    if info.st_uid != os.geteuid():
        raise RegistryError(f"belongs to UID {info.st_uid}, not to this user", path=str(path))
    if info.st_mode & 0o022:
        raise RegistryError("is writable by others", path=str(path))


class WorkerHome:
    """A worker's registry directory, held (``flock``) for the worker's life."""

    def __init__(self, base: Path, worker_name: str, address: str) -> None:
        self.host = socket.gethostname()
        self.host_dir = base / _UNSAFE.sub("_", self.host)
        _own_directory(self.host_dir)
        safe = _UNSAFE.sub("_", worker_name)[:64] or "worker"
        self.path = self.host_dir / f"w.{safe}.{os.getpid()}"
        _own_directory(self.path)
        self.lock_fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self.lock_fd)
            raise RegistryError("is held by another live worker", path=str(self.path),
                                errno=err.errno) from err
        info = json.dumps({"address": address, "name": worker_name}).encode()
        fd = os.open(self.path / _INFO, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, info)
        finally:
            os.close(fd)
        self.address, self.worker_name = address, worker_name
        self.registry = InstanceRegistry(self.path)
        self.claims: dict[str, dict[str, float]] = {}  # instance name → resources it holds
        self.claims_lock = threading.Lock()

    def release(self, *, remove: bool) -> None:
        """Let go of the lock; with ``remove``, and no instance left running, the directory
        (records and logs) goes too."""
        if remove and not self.registry.list():
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)

    @contextlib.contextmanager
    def orphans(self) -> Iterator[builtins.list[tuple[Path, dict[str, str]]]]:
        """The registries on this host whose worker has ended (held shared meanwhile, so
        that no other worker removes one under us), with what each worker wrote of itself."""
        found: builtins.list[tuple[Path, dict[str, str]]] = []
        held: builtins.list[int] = []
        try:
            with os.scandir(self.host_dir) as entries:
                for entry in entries:
                    if not entry.name.startswith("w.") or entry.path == str(self.path) \
                            or not entry.is_dir(follow_symlinks=False):
                        continue
                    fd = _held_shared(Path(entry.path))
                    if fd is not None:
                        held.append(fd)
                        found.append((Path(entry.path), _read_info(Path(entry.path))))
            yield found
        finally:
            for fd in held:
                os.close(fd)

    def remove_if_empty(self, path: Path) -> None:
        """Remove an ended worker's registry that has nothing running (once nobody looks)."""
        fd = _held_shared(path, exclusive=True)
        if fd is None:
            return
        try:
            if not InstanceRegistry(path).list():
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _held_shared(path: Path, *, exclusive: bool = False) -> int | None:
    """The lock of a registry whose worker has ended, held; None while its worker lives."""
    try:
        fd = os.open(path / _LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise OSError("not ours")
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _read_info(path: Path) -> dict[str, str]:
    try:
        fd = os.open(path / _INFO, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return {}
        value = json.loads(os.read(fd, _INFO_MAX))
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)
    if not isinstance(value, dict):
        return {}
    return {key: str(value[key])[:256] for key in ("address", "name") if key in value}


class InstancelibPlugin(WorkerPlugin):
    """Gives each Dask worker a registry of its own (``client.register_plugin(...)``).

    On a graceful worker shutdown (``client.retire_workers``, a cluster scaled down, a
    batch job's end that Dask sees), the instances the worker started are stopped, and
    its registry removed; with ``keep=True`` they go on running (a service that must
    outlive the worker), and any worker on the same host lists and stops them.

    Args:
        keep: leave the worker's instances running when it shuts down.
        root: where the workers' registries go (``BASE`` above).
        stop_timeout: seconds each instance gets to stop at shutdown before SIGKILL.
    """

    name = PLUGIN_NAME
    idempotent = True  # registered again (another client): the first one stays

    def __init__(self, *, keep: bool = False, root: str | os.PathLike[str] | None = None,
                 stop_timeout: float = 10.0) -> None:
        self.keep = keep
        self.root = os.fspath(root) if root is not None else None
        self.stop_timeout = stop_timeout
        self.home: WorkerHome | None = None

    def setup(self, worker: Any) -> None:
        self.home = WorkerHome(base_directory(self.root), str(worker.name), worker.address)
        log.debug("instancelib registry of worker %s: %s", worker.address, self.home.path)

    async def teardown(self, worker: Any) -> None:
        home, self.home = self.home, None
        if home is None:
            return
        await asyncio.to_thread(self._shut, home)

    def _shut(self, home: WorkerHome) -> None:
        if not self.keep:
            try:
                home.registry.stop("*", timeout=self.stop_timeout)
            except InstanceError as err:
                log.warning("worker %s: not every instance stopped: %s", home.address, err)
        home.release(remove=not self.keep)


# -- what the client runs on workers ------------------------------------------------------------


def _home(worker: Any) -> WorkerHome:
    plugin = getattr(worker, "plugins", {}).get(PLUGIN_NAME)
    home: WorkerHome | None = getattr(plugin, "home", None)
    if home is None:
        raise Unsupported("the instancelib plugin is not registered on this worker: "
                          "client.register_plugin(instancelib.dask.InstancelibPlugin())")
    return home


async def _answer(worker: Any, work: Callable[[WorkerHome], T]) -> tuple[str, Any]:
    """Run ``work`` in a thread; its value, or its error with the worker's address set."""
    try:
        home = _home(worker)
        return ("ok", await asyncio.to_thread(work, home))
    except InstanceError as err:
        err.worker = worker.address
        return ("error", err)
    except Exception as err:  # not ours: said in words, typed as a start error
        failure = StartError(f"{type(err).__name__}: {err}")
        failure.worker = worker.address
        return ("error", failure)


def _row(instance: Instance, home: WorkerHome, info: dict[str, str] | None = None,
         path: Path | None = None) -> ClusterInstance:
    alive = info is None
    return ClusterInstance(
        name=instance.name, worker=home.address if info is None else info.get("address", "?"),
        worker_name=home.worker_name if info is None else info.get("name", "?"), host=home.host,
        pid=instance.pid, ip=instance.ip, image=instance.image.path,
        status="paused" if instance.paused else "running",
        registry=str(home.path if path is None else path), worker_alive=alive,
        via=home.address, resources=dict(home.claims.get(instance.name, {})) if alive else {})


def _each(home: WorkerHome, pattern: str,
          act: Callable[[Instance, ClusterInstance], T]) -> builtins.list[T]:
    """``act`` on every instance matching ``pattern``: the worker's own, then those of the
    host's ended workers."""
    results = [act(i, _row(i, home)) for i in home.registry.list(pattern)]
    with home.orphans() as orphans:
        for path, info in orphans:
            results += [act(i, _row(i, home, info, path))
                        for i in InstanceRegistry(path).list(pattern)]
    return results


def _usage(home: WorkerHome) -> dict[str, float]:
    """The resources the worker's running instances hold (claims of ended ones dropped)."""
    with home.claims_lock:
        return _usage_unlocked(home)


def total_resources(worker: Any) -> dict[str, float]:
    state = getattr(worker, "state", None)
    total = getattr(state, "total_resources", None) or getattr(worker, "total_resources", {})
    return dict(total or {})


async def op_usage(dask_worker: Any) -> tuple[str, Any]:
    """How many instances the worker runs and the resources they hold."""
    return await _answer(dask_worker, lambda home: {
        "count": len(home.registry.list()), "used": _usage(home),
        "total": total_resources(dask_worker)})


async def op_start(image: str, names: builtins.list[str], options: dict[str, Any],
                   resources: dict[str, float], dask_worker: Any) -> tuple[str, Any]:
    """Start ``image`` as each of ``names``, one after another, until one fails: a row or
    an error (its worker set) for each name tried."""
    def start_one(home: WorkerHome, name: str) -> ClusterInstance:
        if "://" not in image and not os.path.exists(image):
            raise ImageError("the image is not on this worker's filesystem (is the path on a "
                             "filesystem the workers share?)", path=image, name=name)
        with home.claims_lock if resources else contextlib.nullcontext():
            if resources:
                _check_capacity(total_resources(dask_worker), _usage_unlocked(home),
                                resources, name)
            instance = Instance.start(image, name, registry=home.registry, **options)
            if resources:
                home.claims[name] = dict(resources)
        return _row(instance, home)

    def start(home: WorkerHome) -> builtins.list[tuple[str, Any]]:
        done: builtins.list[tuple[str, Any]] = []
        for name in names:
            try:
                done.append(("ok", start_one(home, name)))
            except InstanceError as err:
                err.worker = dask_worker.address
                done.append(("error", err))
                break
        return done
    return await _answer(dask_worker, start)


def _usage_unlocked(home: WorkerHome) -> dict[str, float]:
    running = {i.name for i in home.registry.list()}
    for name in builtins.list(home.claims):
        if name not in running:
            del home.claims[name]
    used: dict[str, float] = {}
    for claim in home.claims.values():
        for key, amount in claim.items():
            used[key] = used.get(key, 0.0) + amount
    return used


def _check_capacity(total: dict[str, float], used: dict[str, float],
                    wanted: dict[str, float], name: str) -> None:
    for key, amount in wanted.items():
        free = total.get(key, 0.0) - used.get(key, 0.0)
        if amount > free:
            raise InvalidArgument(f"the worker has {key}={total.get(key, 0.0):g}, "
                                  f"{free:g} of it free; the instance asks for {amount:g}",
                                  name=name)


async def op_list(pattern: str, dask_worker: Any) -> tuple[str, Any]:
    return await _answer(dask_worker, lambda home: _each(home, pattern, lambda i, row: row))


async def op_stop(pattern: str, options: dict[str, Any], dask_worker: Any) -> tuple[str, Any]:
    def stop(home: WorkerHome) -> builtins.list[ClusterInstance]:
        def one(instance: Instance, row: ClusterInstance) -> ClusterInstance:
            instance.stop(**options)
            return row
        stopped = _each(home, pattern, one)
        with home.orphans() as orphans:
            ended = [path for path, _info in orphans]
        for path in ended:
            home.remove_if_empty(path)
        return stopped
    return await _answer(dask_worker, stop)


async def op_stats(pattern: str, dask_worker: Any) -> tuple[str, Any]:
    return await _answer(dask_worker, lambda home: _each(
        home, pattern, lambda i, row: ClusterStats(row, i.stats())))


def _one(home: WorkerHome, registry: str, name: str) -> Instance:
    """The instance ``name`` of the registry ``registry`` (this worker's, or an ended one's
    on this host), looked up live."""
    path = Path(registry)
    if path == home.path:
        return home.registry.get(name)
    if path.parent != home.host_dir or not path.name.startswith("w."):
        raise InvalidArgument("not a registry of this host's workers", path=registry, name=name)
    with home.orphans() as orphans:
        if path not in {p for p, _ in orphans}:
            raise NotFound("its worker's registry is not here, or its worker is alive "
                           "(ask that worker)", name=name, path=registry)
        return InstanceRegistry(path).get(name)


async def op_exec(registry: str, name: str, argv: builtins.list[str],
                  options: dict[str, Any], dask_worker: Any) -> tuple[str, Any]:
    return await _answer(dask_worker,
                         lambda home: _one(home, registry, name).exec(argv, **options))


async def op_stop_one(registry: str, name: str, options: dict[str, Any],
                      dask_worker: Any) -> tuple[str, Any]:
    return await _answer(dask_worker, lambda home: _one(home, registry, name).stop(**options))
