"""``InstanceRegistry``: the public list/get/stop over one user's instances on this host.

It is an ``InstanceRecords`` (the storage below instances: files, checks,
locks, pruning) that hands out live ``Instance`` objects, and stops them
through the same machinery ``Instance.stop`` uses.
"""

from __future__ import annotations

import builtins
import os
import signal

from instancelib import display, stopping
from instancelib.errors import NotFound
from instancelib.instance import Instance
from instancelib.records.directory import InstanceRecords, default_root
from instancelib.records.record import InstanceRecord, validate_name

__all__ = ["InstanceList", "InstanceRecord", "InstanceRegistry", "default_root", "validate_name"]

_COLUMNS = ("NAME", "PID", "STATUS", "IMAGE", "IP", "UPTIME")


class InstanceList(builtins.list[Instance]):
    """A list of instances (what ``InstanceRegistry.list`` returns) that a notebook shows
    as a table: name, PID, status, image, IP, uptime."""

    title = "Instances"

    def rows(self) -> builtins.list[builtins.list[str]]:
        """The table's rows, read live (each instance's own ``rows()``)."""
        return [[fields[key] for key in ("name", "PID", "status", "image", "IP", "uptime")]
                for fields in (dict(instance.rows()) for instance in self)]

    def _repr_html_(self) -> str:
        return display.table(f"{self.title} ({len(self)})", _COLUMNS, self.rows())

    def _repr_pretty_(self, printer: display.Printer, cycle: bool) -> None:
        display.pretty_table(printer, cycle, f"{self.title} ({len(self)})", _COLUMNS,
                             self.rows())


class InstanceRegistry(InstanceRecords):
    """The running instances of one user on this host.

    ``root``, ``user`` and ``layout`` are those of ``InstanceRecords``: where
    records and logs live (default ``$INSTANCELIB_HOME``, else
    ``~/.instancelib``), another user's instances (name or UID; only root may
    ask, explicitly), and ``layout="singularity"``/``"apptainer"`` to keep the
    logs where those tools' clients read them
    (``~/.singularity/instances/logs/<host>/<user>/<name>.out``).

    Reading (``list``, ``get``) never blocks on other processes; a record
    whose instance has ended is removed as it is read (with its cgroup).

    Raises:
        PermissionDenied: ``user`` is another user and the caller is not root.
        InvalidArgument: no such user.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *,
                 user: str | int | None = None, layout: str = "instancelib") -> None:
        super().__init__(root, user=user, on_ended=stopping.release_ended, layout=layout)

    def list(self, pattern: str = "*") -> InstanceList:
        """Running instances whose names match the glob ``pattern``, sorted by name
        (a list; a notebook shows it as a table)."""
        return InstanceList(Instance._from_record(record, self)
                            for record in self.records(pattern))

    def _repr_html_(self) -> str:
        listed = self.list()
        listed.title = f"Instances in {self.root}"
        return listed._repr_html_()

    def _repr_pretty_(self, printer: display.Printer, cycle: bool) -> None:
        listed = self.list()
        listed.title = f"Instances in {self.root}"
        listed._repr_pretty_(printer, cycle)

    def get(self, name: str) -> Instance:
        """The running instance called ``name``.

        Raises:
            InvalidName: ``name`` breaks the naming rule.
            NotFound: no running instance has that name.
        """
        record = self.running_record(name)
        if record is None:
            raise NotFound(f"no instance found with name {name}", name=name, named=True)
        return Instance._from_record(record, self)

    def stop(self, pattern: str = "*", *, signal: int = signal.SIGINT, timeout: float = 10.0,
             force: bool = False) -> builtins.list[str]:
        """Stop every running instance matching ``pattern``; return their names.

        The signal goes to all of them first, then they are waited for
        together, so N instances take one grace period, not N.
        """
        instances = self.list(pattern)
        stopping.stop_instances(instances, signal=signal, timeout=timeout, force=force)
        return [instance.name for instance in instances]

    def recover(self) -> builtins.list[Instance]:
        """Find this registry's running instances whose records were lost; list them again.

        Records that are torn, garbled or deleted are re-published from their
        instances' PID 1s whenever they are read (their names stay claimed
        meanwhile); this finds the instances whose record *and* name lock
        were deleted, by a scan of this user's processes (slower: for
        repairs, ``instance list --recover``).  Returns the instances recovered.
        """
        return [Instance._from_record(record, self) for record in self.recover_records()]
