"""``instance list``: read from the records alone (no ``Instance``, no cgroups, no images).

Clients call it often (spython before most instance calls, singularity-compose
for every ``ps``), so it imports only the registry's records and the printers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from instancelib.cli.output import format_instances, tabulate
from instancelib.errors import InvalidArgument

if TYPE_CHECKING:
    from instancelib.cli.main import Session

__all__ = ["instance_list"]

log = logging.getLogger("instancelib")


def instance_list(args: argparse.Namespace, session: Session) -> int:
    if args.json and args.logs:
        raise InvalidArgument("more than one flags have been set (--json and --logs)")
    if args.recover:
        for instance in session.registry().recover():
            log.info("recovered instance %s (pid %d)", instance.name, instance.pid)
    registry = session.records()
    records = registry.records(args.pattern)
    if not args.logs:
        found = []
        for r in records:
            out, err = registry.log_paths(r.name)
            found.append((r.name, r.pid, r.image, r.ip, str(out), str(err)))
        sys.stdout.write(format_instances(found, as_json=args.json))
    else:
        rows = [["INSTANCE NAME", "PID"]]
        trailing = ["LOGS"]
        for r in records:
            out, err = registry.log_paths(r.name)
            rows += [[r.name, str(r.pid)], ["", ""]]
            trailing += [str(err), str(out)]
        sys.stdout.write(tabulate(rows, trailing))
    return 0
