"""What an instance uses and how it is held: its cgroup, limits, stats, pause and resume.

``ResourceUse`` is a part of ``Instance`` (a mixin, kept in a room of its own so that
``instance.py`` stays the facade): it reads the instance's figures at once from the
cgroup the live PID 1 is in (never from a record), and freezes or thaws it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal, overload

import psutil

from instancelib.cgroups import control as cgroup_control
from instancelib.cgroups.limits import Limits
from instancelib.cgroups.stats import Sample, Stats
from instancelib.cgroups.stats import sample as read_sample
from instancelib.cgroups.tree import CgroupInfo
from instancelib.durations import seconds
from instancelib.errors import NotFound, PermissionDenied, Timeout, Unsupported
from instancelib.records.record import InstanceRecord

__all__ = ["ResourceUse"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ResourceUse:
    """``Instance``'s cgroup, limits, stats and freezer (see ``Instance``)."""

    name: str
    pid: int
    _record: InstanceRecord
    _last_sample: Sample | None = None

    # Instance's own, used here.
    def is_running(self) -> bool:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def _check_owner(self) -> None:
        raise NotImplementedError

    @property
    def cgroup(self) -> CgroupInfo | None:
        """The instance's cgroup: where it is, which hierarchy serves each controller.

        None when it has none (an ordinary user without a delegated cgroup v2
        subtree), or when the instance is not running.
        """
        return (self._live_cgroup() or None) if self.is_running() else None

    def _live_cgroup(self) -> CgroupInfo:
        """The cgroup PID 1 (already checked to run) is in, as the kernel says (see control)."""
        return cgroup_control.live_info(self.pid, self._record.uid,
                                     CgroupInfo.from_dict(self._record.cgroup))

    @property
    def limits(self) -> Limits:
        """The limits the instance was started with (empty ``Limits()`` for none)."""
        return Limits(**self._record.options.get("limits", {}))

    @overload
    def stats(self, *, stream: Literal[False] = ..., interval: float = ...) -> Stats: ...

    @overload
    def stats(self, *, stream: Literal[True], interval: float = ...) -> Iterator[Stats]: ...

    def stats(self, *, stream: bool = False,
              interval: float = 1.0) -> Stats | Iterator[Stats]:
        """The instance's resource use now, read at once (see ``Stats``).

        With ``stream=True``, an iterator that yields a reading every
        ``interval`` seconds until the instance ends.

        Raises:
            NotFound: the instance is not running.
        """
        if stream:
            seconds(interval, "interval")
            return self._stream_stats(interval)
        return self._stats_now()

    def _stats_now(self) -> Stats:
        self._check_owner()
        if not self.is_running():
            raise NotFound("the instance is not running", name=self.name)
        cgroup = self._live_cgroup()
        # The first window starts when PID 1 did (boot time + its start time in ticks).
        started = int((psutil.boot_time() + self._record.starttime / _CLOCK_TICKS) * 1e9)
        try:
            stats, self._last_sample = read_sample(self.name, self.pid, cgroup,
                                                   self._last_sample, started)
        except OSError as err:
            if not self.is_running():
                raise NotFound("the instance is not running", name=self.name) from err
            raise
        return stats

    def _stream_stats(self, interval: float) -> Iterator[Stats]:
        while True:
            try:
                yield self._stats_now()
            except NotFound:
                return
            try:
                self.wait(interval)
            except Timeout:
                continue
            return

    def pause(self) -> None:
        """Freeze every process of the instance (its cgroup's freezer).

        Raises:
            NotFound: the instance is not running.
            Unsupported: the instance has no cgroup with a freezer.
        """
        self._freeze(True)

    def resume(self) -> None:
        """Thaw a paused instance."""
        self._freeze(False)

    def _freeze(self, frozen: bool) -> None:
        self._check_owner()
        if not self.is_running():
            raise NotFound("the instance is not running", name=self.name)
        try:
            cgroup_control.freeze(self._live_cgroup(), frozen)
        except Unsupported as err:
            err.name = self.name
            raise
        except TimeoutError as err:
            raise Timeout(str(err), name=self.name) from err
        except OSError as err:
            raise PermissionDenied("cannot freeze the instance's cgroup", name=self.name,
                                   errno=err.errno) from err

    @property
    def paused(self) -> bool:
        """Whether the instance is frozen (``pause()``)."""
        cgroup = self.cgroup
        return cgroup is not None and cgroup_control.is_frozen(cgroup)
