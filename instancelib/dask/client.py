"""The client's side: placing instances on workers, and asking all of them at once."""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from instancelib.errors import InstanceError, InvalidArgument, NotFound, StartError
from instancelib.process import ExecResult

from . import worker as side
from .values import ClusterInstance, ClusterList, ClusterStats

__all__ = ["exec", "get", "list", "register", "start", "stats", "stop"]

ANSWER_TIMEOUT = 10.0  # seconds a worker has to answer a list, stop or stats

# The workers each client has seen running instances (address → their names), so that a
# worker that has left the cluster is reported, not silently dropped.
_seen: weakref.WeakKeyDictionary[Any, dict[str, set[str]]] = weakref.WeakKeyDictionary()
_seen_lock = threading.Lock()


def register(client: Any, *, keep: bool = False, root: str | os.PathLike[str] | None = None,
             stop_timeout: float = 10.0) -> None:
    """Register ``InstancelibPlugin`` on every worker, present and future (once: a plugin
    already registered stays as it is)."""
    client.register_plugin(side.InstancelibPlugin(keep=keep, root=root,
                                                  stop_timeout=stop_timeout))


# -- asking workers ------------------------------------------------------------------------------


def _scheduler_workers(client: Any) -> dict[str, dict[str, Any]]:
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # distributed before 2025: every worker, always
        info = client.scheduler_info()
    return dict(info.get("workers", {}))


def _resolve(client: Any, workers: Iterable[str] | None) -> builtins.list[str]:
    """Worker addresses, from addresses or Dask worker names; all when None."""
    known = _scheduler_workers(client)
    if workers is None:
        return sorted(known)
    by_name = {str(info.get("name")): address for address, info in known.items()}
    found = []
    for wanted in workers:
        address = wanted if wanted in known else by_name.get(str(wanted))
        if address is None:
            raise InvalidArgument(f"no such worker in the cluster: {wanted!r}")
        found.append(address)
    return found


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".rstrip(": ") if str(err) else type(err).__name__


def _ask(client: Any, workers: Sequence[str], function: Callable[..., Any], *args: Any,
         timeout: float = ANSWER_TIMEOUT) -> tuple[dict[str, Any], dict[str, str]]:
    """``function`` on each worker at once: their ``("ok"|"error", value)`` answers, and
    why each of the others did not answer."""
    answers: dict[str, Any] = {}
    unreachable: dict[str, str] = {}
    if not workers:
        return answers, unreachable
    pool = concurrent.futures.ThreadPoolExecutor(min(32, len(workers)),
                                                 "instancelib-dask")
    try:
        futures = {address: pool.submit(client.run, function, *args, workers=[address],
                                        on_error="return")
                   for address in workers}
        concurrent.futures.wait(futures.values(), timeout)
    finally:
        pool.shutdown(wait=False)
    for address, future in futures.items():
        if not future.done():
            unreachable[address] = f"no answer within {timeout:g} s"
            continue
        try:
            reply = future.result()
        except Exception as err:  # the scheduler could not reach it
            unreachable[address] = _describe(err)
            continue
        value = reply.get(address) if isinstance(reply, dict) else None
        if isinstance(value, BaseException):
            unreachable[address] = _describe(value)
        elif isinstance(value, tuple) and len(value) == 2 and value[0] in ("ok", "error"):
            answers[address] = value
        else:
            unreachable[address] = "the scheduler no longer lists it"
    return answers, unreachable


def _value(address: str, answer: tuple[str, Any]) -> Any:
    kind, value = answer
    if kind == "error":
        raise value
    return value


def _one(client: Any, address: str, function: Callable[..., Any], *args: Any,
         timeout: float | None = None) -> Any:
    answers, unreachable = _ask(client, [address], function, *args,
                                timeout=ANSWER_TIMEOUT if timeout is None else timeout)
    if address in unreachable:
        failure = StartError(f"the worker did not answer: {unreachable[address]}")
        failure.worker = address
        raise failure
    return _value(address, answers[address])


def _note_seen(client: Any, rows: Iterable[ClusterInstance], asked: Iterable[str]) -> None:
    with _seen_lock:
        seen = _seen.setdefault(client, {})
        for address in asked:
            seen.pop(address, None)
        for row in rows:
            if row.worker_alive:
                seen.setdefault(row.worker, set()).add(row.name)


def _unique(rows: Iterable[ClusterInstance]) -> builtins.list[ClusterInstance]:
    """One row per instance: several workers of a host report an ended worker's."""
    found: dict[tuple[str, str, str], ClusterInstance] = {}
    for row in rows:
        found.setdefault(row.key, row)
    return sorted(found.values(), key=lambda r: (r.name, r.host, r.worker))


# -- the functions ---------------------------------------------------------------------------


def list(client: Any, pattern: str = "*", *, workers: Iterable[str] | None = None,
         timeout: float = ANSWER_TIMEOUT) -> ClusterList:
    """Every instance matching ``pattern`` on every worker (or ``workers``), asked at once.

    A worker that does not answer within ``timeout`` seconds, that lacks the plugin, or
    that has left the cluster after running instances is in ``unreachable`` with the
    reason; the others' instances are listed all the same.  Instances of a worker that
    has ended are listed by the other workers of their host (``worker_alive`` False).
    """
    addresses = _resolve(client, workers)
    answers, unreachable = _ask(client, addresses, side.op_list, pattern, timeout=timeout)
    rows: builtins.list[ClusterInstance] = []
    for address, answer in answers.items():
        try:
            rows += _value(address, answer)
        except InstanceError as err:
            unreachable[address] = str(err)
    rows = _unique(rows)
    if workers is None:
        with _seen_lock:
            left = {a: names for a, names in _seen.get(client, {}).items() if a not in answers
                    and a not in unreachable}
        for address, names in left.items():
            still = sorted(r.name for r in rows if r.worker == address)
            unreachable[address] = (
                "has left the cluster; its instances still run: " + ", ".join(still)
                if still else "has left the cluster; it ran " + ", ".join(sorted(names))
                + " when last asked, which no worker of its host reports now")
    _note_seen(client, rows, answers)
    return ClusterList(rows, unreachable)


def get(client: Any, name: str, *, worker: str | None = None) -> ClusterInstance:
    """The instance ``name`` (on ``worker`` when given).

    Raises:
        NotFound: none; InvalidArgument: one on several workers and no ``worker`` given.
    """
    rows = list(client, name, workers=None if worker is None else [worker])
    rows = ClusterList([r for r in rows if r.name == name])
    if not rows:
        raise NotFound("no instance of that name in the cluster", name=name)
    if len(rows) > 1:
        raise InvalidArgument("the name is taken on several workers ("
                              + ", ".join(r.worker for r in rows) + "): pass worker=",
                              name=name)
    return rows[0]


def _placement(client: Any, candidates: Sequence[str], replicas: int,
               resources: Mapping[str, float]) -> builtins.list[str]:
    """A worker for each replica: those with the fewest instances first, and only where
    the Dask worker resources asked for are free."""
    answers, unreachable = _ask(client, candidates, side.op_usage)
    usage = {address: _value(address, answer) for address, answer in answers.items()}
    chosen = []
    for _ in range(replicas):
        fits = [a for a in candidates if a in usage and all(
            usage[a]["total"].get(k, 0.0) - usage[a]["used"].get(k, 0.0) >= v
            for k, v in resources.items())]
        if not fits:
            wanted = ", ".join(f"{k}={v:g}" for k, v in resources.items())
            why = "; ".join(f"{a}: {r}" for a, r in sorted(unreachable.items()))
            raise StartError(f"no worker can take another instance asking {wanted or 'nothing'}"
                             + (f" ({why})" if why else ""))
        address = min(fits, key=lambda a: (usage[a]["count"], candidates.index(a)))
        chosen.append(address)
        usage[address]["count"] += 1
        for key, amount in resources.items():
            usage[address]["used"][key] = usage[address]["used"].get(key, 0.0) + amount
    return chosen


def start(client: Any, image: Any, name: str, *, workers: Iterable[str] | None = None,
          replicas: int = 1, resources: Mapping[str, float] | None = None,
          **start_options: Any) -> ClusterList:
    """Start ``image`` as ``name`` on a worker (``replicas=N``: ``name-0`` … ``name-{N-1}``
    spread over the workers), with ``Instance.start``'s options; all or none.

    Args:
        image: a path (or ``Image``) every chosen worker can read at that path.
        workers: the workers to place them on (addresses or Dask names; default: all).
        replicas: how many.
        resources: Dask worker resources each instance holds while it runs
            (``{"GPU": 1}``): only workers that declare them, and have them free, are
            chosen.

    Returns:
        The instances started (a ``ClusterList``), in replica order.

    Raises:
        InstanceError: the start's own errors, with ``worker`` set to the worker's address
            (an image missing on a worker is an ``ImageError`` naming worker and path).
    """
    if "registry" in start_options:
        raise InvalidArgument("each worker starts instances in its own registry "
                              "(no registry= here)", name=name)
    if not isinstance(replicas, int) or replicas < 1:
        raise InvalidArgument(f"replicas must be a whole number ≥ 1, not {replicas!r}",
                              name=name)
    wanted = {str(k): float(v) for k, v in (resources or {}).items()}
    path = os.path.abspath(os.fspath(getattr(image, "path", image)))
    names = [name] if replicas == 1 else [f"{name}-{i}" for i in range(replicas)]
    candidates = _resolve(client, workers)
    if not candidates:
        raise StartError("the cluster has no workers", name=name)
    chosen = _placement(client, candidates, replicas, wanted)
    batches: dict[str, builtins.list[str]] = {}
    for address, replica in zip(chosen, names, strict=True):
        batches.setdefault(address, []).append(replica)
    timeout = float(start_options.get("timeout", 30.0))
    rows: dict[str, ClusterInstance] = {}
    failures: builtins.list[InstanceError] = []

    def on(address: str) -> None:
        batch = batches[address]
        try:
            done = _one(client, address, side.op_start, path, batch, dict(start_options),
                        wanted, timeout=timeout * len(batch) + 30)
        except InstanceError as err:
            failures.append(err)
            return
        for kind, value in done:
            if kind == "ok":
                rows[value.name] = value
            else:
                failures.append(value)

    threads = [threading.Thread(target=on, args=(address,), name="instancelib-dask-start")
               for address in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [rows[n] for n in names if n in rows]
    if failures or len(started) != replicas:
        _stop_rows(client, started)
        raise failures[0] if failures else StartError("not every replica started", name=name)
    _note_seen(client, started, [])
    return ClusterList(started)


def _stop_rows(client: Any, rows: Iterable[ClusterInstance], **options: Any) -> None:
    for row in rows:
        with contextlib.suppress(NotFound):
            _one(client, row.via, side.op_stop_one, row.registry, row.name, options)


def _target(client: Any, instance: ClusterInstance | str,
            worker: str | None) -> ClusterInstance:
    return instance if isinstance(instance, ClusterInstance) else get(client, instance,
                                                                       worker=worker)


def exec(client: Any, instance: ClusterInstance | str, argv: Sequence[str], *,
         worker: str | None = None, **exec_options: Any) -> ExecResult:
    """``Instance.exec`` on the worker that has the instance (a row, or a name)."""
    row = _target(client, instance, worker)
    timeout = exec_options.get("timeout")
    result: ExecResult = _one(client, row.via, side.op_exec, row.registry, row.name,
                              builtins.list(argv), exec_options,
                              timeout=None if timeout is None else float(timeout) + 30)
    return result


def stop(client: Any, pattern: str = "*", *, workers: Iterable[str] | None = None,
         timeout: float = 10.0, **stop_options: Any) -> ClusterList:
    """Stop every instance matching ``pattern`` on every worker (or ``workers``), at once.

    Returns the instances stopped; ``unreachable`` names the workers that did not answer.
    """
    addresses = _resolve(client, workers)
    answers, unreachable = _ask(client, addresses, side.op_stop, pattern,
                                {"timeout": timeout, **stop_options}, timeout=timeout + 30)
    rows: builtins.list[ClusterInstance] = []
    errors: builtins.list[InstanceError] = []
    for address, answer in answers.items():
        try:
            rows += _value(address, answer)
        except InstanceError as err:
            errors.append(err)
    if errors:
        raise errors[0]
    return ClusterList(_unique(rows), unreachable)


def stats(client: Any, pattern: str = "*", *,
          workers: Iterable[str] | None = None) -> builtins.list[ClusterStats]:
    """One ``Stats`` reading of each instance matching ``pattern``, with where it runs."""
    addresses = _resolve(client, workers)
    answers, _unreachable = _ask(client, addresses, side.op_stats, pattern)
    found: dict[tuple[str, str, str], ClusterStats] = {}
    for address, answer in answers.items():
        for reading in _value(address, answer):
            found.setdefault(reading.instance.key, reading)
    return sorted(found.values(), key=lambda s: (s.instance.name, s.instance.host))
