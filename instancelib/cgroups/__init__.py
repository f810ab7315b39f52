"""Resource control: limits, the instance's cgroup (v2, v1 or both), and its stats."""

from instancelib.cgroups.limits import Device as Device
from instancelib.cgroups.limits import Limits as Limits
from instancelib.cgroups.stats import Stats as Stats
from instancelib.cgroups.tree import CgroupInfo as CgroupInfo

__all__ = ["CgroupInfo", "Device", "Limits", "Stats"]
