"""What the Dask integration hands back: plain attrs values that pickle, and their display."""

from __future__ import annotations

import builtins
from typing import Any

import attrs

from instancelib import display
from instancelib.cgroups import Stats

__all__ = ["ClusterInstance", "ClusterList", "ClusterStats"]

_COLUMNS = ("worker", "host", "name", "PID", "IP", "image", "status")


@attrs.frozen(repr=False)
class ClusterInstance:
    """One instance somewhere in a Dask cluster, as a worker saw it.

    Attributes:
        name: the instance's name (unique within its worker's registry).
        worker: the address of the worker that started it.
        worker_name: that worker's Dask name.
        host: the host it runs on.
        pid: the host PID of its PID 1 (on ``host``).
        ip: its IP address ("" on the host's network).
        image: the image's path (on ``host``).
        status: ``"running"`` or ``"paused"``.
        registry: the worker's registry directory (on ``host``).
        worker_alive: False when the worker that started it has ended (an instance kept
            with ``keep=True``, or one whose worker was killed); a live worker on the same
            host reports it and acts on it.
        via: the address of the live worker that reported it (and that ``exec``, ``stop``
            and ``stats`` go through).
        resources: the Dask worker resources it holds (``start(..., resources=...)``).
    """

    name: str
    worker: str
    worker_name: str
    host: str
    pid: int
    ip: str
    image: str
    status: str
    registry: str
    worker_alive: bool = True
    via: str = ""
    resources: dict[str, float] = attrs.field(factory=dict)

    def __repr__(self) -> str:
        gone = "" if self.worker_alive else ", worker gone"
        return (f"<ClusterInstance {self.name!r} on {self.worker} ({self.host}{gone}): "
                f"{self.status}, pid {self.pid}>")

    @property
    def key(self) -> tuple[str, str, str]:
        """What tells two rows of one instance apart from two instances: host, registry, name."""
        return (self.host, self.registry, self.name)

    def row(self) -> builtins.list[str]:
        worker = self.worker if self.worker_alive else f"{self.worker} (gone)"
        return [worker, self.host, self.name, str(self.pid), self.ip or "host network",
                self.image, self.status]

    def _repr_html_(self) -> str:
        return display.key_values(f"Instance {self.name}", builtins.list(zip(_COLUMNS,
                                                                             self.row(),
                                                                             strict=True)))

    def _repr_pretty_(self, printer: display.Printer, cycle: bool) -> None:
        display.pretty_key_values(printer, cycle, f"Instance {self.name}",
                                  builtins.list(zip(_COLUMNS, self.row(), strict=True)))


@attrs.frozen
class ClusterStats:
    """One instance's resource use (``Instance.stats()``), with where it runs."""

    instance: ClusterInstance
    stats: Stats

    def _repr_html_(self) -> str:
        return self.stats._repr_html_()


class ClusterList(builtins.list[ClusterInstance]):
    """The instances of a cluster (a list), and the workers that did not answer.

    Attributes:
        unreachable: worker address → why it did not answer (it died, timed out,
            or lacks the plugin).  Their instances are not in the list unless another
            worker on the same host reported them (``worker_alive`` False).
    """

    def __init__(self, rows: Any = (), unreachable: dict[str, str] | None = None) -> None:
        super().__init__(rows)
        self.unreachable: dict[str, str] = dict(unreachable or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (ClusterList, (builtins.list(self), self.unreachable))

    def rows(self) -> builtins.list[builtins.list[str]]:
        return [instance.row() for instance in self]

    def _title(self) -> str:
        missing = f", {len(self.unreachable)} workers not answering" if self.unreachable else ""
        return f"Cluster instances ({len(self)}{missing})"

    def _repr_html_(self) -> str:
        text = display.table(self._title(), _COLUMNS, self.rows())
        for worker, why in sorted(self.unreachable.items()):
            text += display.key_values(f"worker {worker}", [("not answering", why)])
        return text

    def _repr_pretty_(self, printer: display.Printer, cycle: bool) -> None:
        display.pretty_table(printer, cycle, self._title(), _COLUMNS, self.rows())
        for worker, why in sorted(self.unreachable.items()):
            printer.break_()
            printer.text(f"  worker {worker} not answering: {why}")
