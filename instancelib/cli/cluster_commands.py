"""``cluster list|stop``: ``instance list|stop`` across a Dask cluster (``instancelib.dask``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from instancelib.cli.output import go_json_line, tabulate
from instancelib.cli.parser import parse_signal
from instancelib.errors import ClusterError, InvalidArgument, NotFound, Unsupported

if TYPE_CHECKING:
    from instancelib.cli.main import Session
    from instancelib.dask import ClusterList

__all__ = ["cluster_list", "cluster_stop"]

log = logging.getLogger("instancelib")


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """A Dask client of the scheduler the arguments name, and ``instancelib.dask``."""
    try:
        import distributed  # noqa: PLC0415

        import instancelib.dask as cluster  # noqa: PLC0415
    except ImportError as err:
        raise Unsupported("the cluster commands need Dask: pip install 'instancelib[dask]'") \
            from err
    address = args.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        raise InvalidArgument("name the Dask scheduler: --scheduler ADDR (or set "
                              "DASK_SCHEDULER_ADDRESS)")
    try:
        client: Any = distributed.Client(address,  # type: ignore[no-untyped-call]
                                         timeout=args.answer_timeout)
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {err}") from None
    try:
        yield client, cluster
    finally:
        client.close()


def _warn_unreachable(listing: ClusterList) -> None:
    for worker, why in sorted(listing.unreachable.items()):
        log.warning("worker %s: %s", worker, why)


def cluster_list(args: argparse.Namespace, session: Session) -> int:
    with _client(args) as (client, cluster):
        listing = cluster.list(client, args.pattern, timeout=args.answer_timeout)
    if args.json:
        sys.stdout.write(go_json_line({
            "instances": [{"instance": r.name, "pid": r.pid, "img": r.image, "ip": r.ip,
                           "status": r.status, "worker": r.worker, "workerName": r.worker_name,
                           "workerAlive": r.worker_alive, "host": r.host,
                           "registry": r.registry} for r in listing],
            "unreachable": dict(sorted(listing.unreachable.items()))}))
    else:
        table = [["INSTANCE NAME", "PID", "IP", "WORKER", "HOST"]] + [
            [r.name, str(r.pid), r.ip, r.worker if r.worker_alive else f"{r.worker} (gone)",
             r.host] for r in listing]
        sys.stdout.write(tabulate(table, ["IMAGE"] + [r.image for r in listing]))
    _warn_unreachable(listing)
    return 0


def cluster_stop(args: argparse.Namespace, session: Session) -> int:
    if args.all == bool(args.pattern):
        raise InvalidArgument("give an instance name (or pattern), or --all")
    pattern = "*" if args.all else args.pattern
    with _client(args) as (client, cluster):
        stopped = cluster.stop(client, pattern, timeout=args.timeout, force=args.force,
                               signal=parse_signal(args.signal))
    for row in stopped:
        log.info("Stopped %s instance of %s on %s (%s, PID=%d)", row.name, row.image,
                 row.worker, row.host, row.pid)
    _warn_unreachable(stopped)
    if not stopped:
        raise NotFound("no instance found" if args.all else
                       f"no instance found with name {pattern}")
    return 0
