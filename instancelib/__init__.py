"""instancelib: run container images as named, long-lived background instances.

The public API, re-exported from the modules that define it::

    from instancelib import Image, Instance
    web = Instance.start(Image("nginx-sandbox"), "web", writable_tmpfs=True)
    print(web.exec(["cat", "/etc/os-release"]).stdout)
    web.stop()
"""

from __future__ import annotations

from instancelib.errors import BuildError as BuildError
from instancelib.errors import ClusterError as ClusterError
from instancelib.errors import DefinitionError as DefinitionError
from instancelib.errors import ExecError as ExecError
from instancelib.errors import ImageError as ImageError
from instancelib.errors import InstanceError as InstanceError
from instancelib.errors import InvalidArgument as InvalidArgument
from instancelib.errors import InvalidName as InvalidName
from instancelib.errors import NameConflict as NameConflict
from instancelib.errors import NotFound as NotFound
from instancelib.errors import PermissionDenied as PermissionDenied
from instancelib.errors import RegistryError as RegistryError
from instancelib.errors import StartError as StartError
from instancelib.errors import StartTimeout as StartTimeout
from instancelib.errors import Timeout as Timeout
from instancelib.errors import Unsupported as Unsupported
from instancelib.version import __version__ as __version__

# Not typing's TYPE_CHECKING: importing typing would cost every quick command (the
# CLI's `--version`) more than the rest of its work.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from instancelib.binds import Bind as Bind
    from instancelib.build import BuildProgress as BuildProgress
    from instancelib.build import build_cached as build_cached
    from instancelib.build import build_image as build_image
    from instancelib.cgroups import CgroupInfo as CgroupInfo
    from instancelib.cgroups import Device as Device
    from instancelib.cgroups import Limits as Limits
    from instancelib.cgroups import Stats as Stats
    from instancelib.foreground import Image as Image
    from instancelib.healthcheck import HealthCheck as HealthCheck
    from instancelib.image.deffile import Definition as Definition
    from instancelib.image.inspect import AppMetadata as AppMetadata
    from instancelib.image.inspect import ImageMetadata as ImageMetadata
    from instancelib.instance import Instance as Instance
    from instancelib.instance import InstanceStatus as InstanceStatus
    from instancelib.network.args import PortMap as PortMap
    from instancelib.process import ExecResult as ExecResult
    from instancelib.process import InstanceProcess as InstanceProcess
    from instancelib.readiness import CommandProbe as CommandProbe
    from instancelib.readiness import FileProbe as FileProbe
    from instancelib.readiness import TcpProbe as TcpProbe
    from instancelib.records.record import InstanceRecord as InstanceRecord
    from instancelib.registry import InstanceList as InstanceList
    from instancelib.registry import InstanceRegistry as InstanceRegistry
    from instancelib.supervision import HealthState as HealthState
    from instancelib.supervision import ServiceState as ServiceState

# Everything but the errors and the version is imported on first use: a program
# (the CLI above all: `singularity --version`, `instance list`) pays only for the
# modules it touches, not for all of instancelib.
_LAZY = {
    "AppMetadata": "instancelib.image.inspect",
    "Bind": "instancelib.binds",
    "BuildProgress": "instancelib.build",
    "CgroupInfo": "instancelib.cgroups",
    "CommandProbe": "instancelib.readiness",
    "Definition": "instancelib.image.deffile",
    "Device": "instancelib.cgroups",
    "ExecResult": "instancelib.process",
    "FileProbe": "instancelib.readiness",
    "HealthCheck": "instancelib.healthcheck",
    "HealthState": "instancelib.supervision",
    "Image": "instancelib.foreground",
    "ImageMetadata": "instancelib.image.inspect",
    "Instance": "instancelib.instance",
    "InstanceProcess": "instancelib.process",
    "InstanceList": "instancelib.registry",
    "InstanceRecord": "instancelib.records.record",
    "InstanceRegistry": "instancelib.registry",
    "InstanceStatus": "instancelib.instance",
    "Limits": "instancelib.cgroups",
    "PortMap": "instancelib.network.args",
    "ServiceState": "instancelib.supervision",
    "Stats": "instancelib.cgroups",
    "TcpProbe": "instancelib.readiness",
    "build_cached": "instancelib.build",
    "build_image": "instancelib.build",
}

# The names whose first use is usually followed by a start.
_START_PATH = frozenset({"Image", "Instance", "build_cached", "build_image"})

__all__ = [
    "AppMetadata",
    "Bind",
    "BuildError",
    "BuildProgress",
    "CgroupInfo",
    "ClusterError",
    "CommandProbe",
    "Definition",
    "DefinitionError",
    "Device",
    "ExecError",
    "ExecResult",
    "FileProbe",
    "HealthCheck",
    "HealthState",
    "Image",
    "ImageError",
    "ImageMetadata",
    "Instance",
    "InstanceError",
    "InstanceList",
    "InstanceProcess",
    "InstanceRecord",
    "InstanceRegistry",
    "InstanceStatus",
    "InvalidArgument",
    "InvalidName",
    "Limits",
    "NameConflict",
    "NotFound",
    "PermissionDenied",
    "PortMap",
    "RegistryError",
    "ServiceState",
    "StartError",
    "StartTimeout",
    "Stats",
    "TcpProbe",
    "Timeout",
    "Unsupported",
    "__version__",
    "build_cached",
    "build_image",
]

for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type):
        _obj.__module__ = "instancelib"
del _name, _obj


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'instancelib' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 (see TYPE_CHECKING)

    if name in _START_PATH:
        # The fork-server and the first spare PID 1 get ready while the start path's
        # ~100 ms of imports run, so the first start does not wait for them.
        from instancelib import warmup  # noqa: PLC0415

        warmup.begin()
    value = getattr(importlib.import_module(module), name)
    if isinstance(value, type):
        value.__module__ = "instancelib"
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
