"""``instance list``: read from the records alone (no ``Instance``, no cgroups, no images).

Clients call it often (spython before most instance calls, singularity-compose
for every ``ps``), so it imports only the registry's records and the printers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from instancelib.cli.output import format_instances, tabulate
from instancelib.errors import InvalidArgument
from instancelib.records.directory import InstanceRecords
from instancelib.records.record import InstanceRecord
from instancelib.supervision import read_state

if TYPE_CHECKING:
    from instancelib.cli.main import Session

__all__ = ["instance_list"]


def _service_fields(registry: InstanceRecords, name: str) -> dict[str, Any]:
    """What ``--json`` adds beside Apptainer's fields, for an instance whose PID 1 keeps a
    state file (a restart policy or a health check): nothing for the others."""
    state = read_state(registry, name)
    if state is None:
        return {}
    health = state.health
    return {"service": state.service, "serviceExitCode": state.exit_code,
            "restarts": state.restarts, "restartPolicy": state.restart,
            "health": None if health is None else {
                "status": health.status, "failingStreak": health.streak,
                "output": health.output, "checkedAt": health.checked_at}}


def _status_table(registry: InstanceRecords, records: list[InstanceRecord]) -> str:
    rows = [["INSTANCE NAME", "PID", "SERVICE", "RESTARTS", "HEALTH"]]
    images = []
    for r in records:
        state = read_state(registry, r.name)
        if state is None:
            service, restarts, health = "-", "-", "-"
        else:
            service = state.service if state.service == "running" or state.exit_code is None \
                else f"{state.service} ({state.exit_code})"
            restarts = str(state.restarts)
            health = state.health.status if state.health is not None else "-"
        rows.append([r.name, str(r.pid), service, restarts, health])
        images.append(r.image)
    return tabulate(rows, ["IMAGE", *images])

log = logging.getLogger("instancelib")


def instance_list(args: argparse.Namespace, session: Session) -> int:
    if args.json and args.logs:
        raise InvalidArgument("more than one flags have been set (--json and --logs)")
    if args.status and (args.json or args.logs):
        raise InvalidArgument("more than one flags have been set (--status with --json or "
                              "--logs)")
    if args.recover:
        for instance in session.registry().recover():
            log.info("recovered instance %s (pid %d)", instance.name, instance.pid)
    registry = session.records()
    records = registry.records(args.pattern)
    if args.status:
        sys.stdout.write(_status_table(registry, records))
    elif not args.logs:
        found = []
        for r in records:
            out, err = registry.log_paths(r.name)
            found.append((r.name, r.pid, r.image, r.ip, str(out), str(err)))
        sys.stdout.write(format_instances(found, as_json=args.json,
                                          extra=[_service_fields(registry, r.name)
                                                 for r in records]))
    else:
        rows = [["INSTANCE NAME", "PID"]]
        trailing = ["LOGS"]
        for r in records:
            out, err = registry.log_paths(r.name)
            rows += [[r.name, str(r.pid)], ["", ""]]
            trailing += [str(err), str(out)]
        sys.stdout.write(tabulate(rows, trailing))
    return 0
