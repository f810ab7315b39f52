"""The exceptions instancelib raises.

Every error a caller can cause is one of these; each carries the facts that
explain it as attributes (the instance ``name``, the ``pid``, the ``path`` the
user gave, the ``errno`` and the set-up ``step`` that failed) and composes its
message from them::

    InstanceError
    ├── InvalidArgument (also ValueError)    a bad option value
    │   └── InvalidName                      a name that breaks the naming rule
    ├── ImageError                           missing, unreadable or unsupported image
    ├── BuildError                           a build step (%setup, %post, %test...) failed
    ├── DefinitionError (also ValueError)    a malformed definition file (with its line)
    ├── NotFound (also LookupError)          no such (running) instance
    ├── NameConflict                         the name is taken by a running instance
    ├── StartError                           the instance could not be started
    │   └── StartTimeout (also Timeout)      ... in time
    ├── ExecError                            a command could not be started inside
    ├── Timeout (also TimeoutError)          a bounded wait ran out
    ├── PermissionDenied (also PermissionError)
    ├── Unsupported                          the kernel or host lacks a feature
    ├── RegistryError                        the registry on disk is unusable
    └── ClusterError                         a Dask cluster cannot be reached
"""

from __future__ import annotations

import os

__all__ = [
    "BuildError",
    "ClusterError",
    "DefinitionError",
    "ExecError",
    "ImageError",
    "InstanceError",
    "InvalidArgument",
    "InvalidName",
    "NameConflict",
    "NotFound",
    "PermissionDenied",
    "RegistryError",
    "StartError",
    "StartTimeout",
    "Timeout",
    "Unsupported",
]


class InstanceError(Exception):
    """Base class of every instancelib error.

    Attributes:
        message: what went wrong, in one sentence.
        name: the instance concerned, if any.
        pid: the host PID concerned, if any.
        path: the user's path concerned (never an internal staging path).
        errno: the operating-system error number behind the failure, if any.
        step: the set-up step that failed (``"mount /proc"``), if any.
        detail: extra text, e.g. the tail of the service's stderr.
        named: the message names the instance itself, in Singularity's words
            ("instance NAME already exists"): no ``instance 'NAME':`` prefix.
        worker: the Dask worker (its address) where it happened (``instancelib.dask``).
    """

    worker: str | None = None

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        pid: int | None = None,
        path: str | None = None,
        errno: int | None = None,
        step: str | None = None,
        detail: str | None = None,
        named: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.name = name
        self.pid = pid
        self.path = path
        self.errno = errno
        self.step = step
        self.detail = detail
        self.named = named

    def __str__(self) -> str:
        parts = []
        if self.worker is not None:
            parts.append(f"on worker {self.worker}: ")
        if self.name is not None and not self.named:
            parts.append(f"instance {self.name!r}: ")
        if self.step is not None:
            parts.append(f"{self.step}: ")
        parts.append(self.message)
        if self.path is not None and self.path not in self.message:
            parts.append(f": {self.path}")
        if self.errno is not None:
            parts.append(f" ({os.strerror(self.errno)})")
        if self.detail:
            parts.append(f"\n{self.detail.rstrip()}")
        return "".join(parts)

    def __repr__(self) -> str:
        fields = [repr(self.message)]
        for key in ("name", "pid", "path", "errno", "step", "worker"):
            value = getattr(self, key)
            if value is not None:
                fields.append(f"{key}={value!r}")
        return f"{type(self).__name__}({', '.join(fields)})"


class InvalidArgument(InstanceError, ValueError):
    """An option has a value instancelib cannot use (a bad bind spec, env name, probe)."""


class InvalidName(InvalidArgument):
    """An instance name breaks the naming rule ``^[a-zA-Z0-9._-]+$`` (``.``/``..`` excluded)."""


class ImageError(InstanceError):
    """The image is missing, unreadable, or not a container image."""


class BuildError(InstanceError):
    """A build step failed: ``step`` names it (``%post``), ``detail`` holds its last output."""


class DefinitionError(InstanceError, ValueError):
    """A definition file is malformed; ``line`` is where (1-based), when known."""

    def __init__(self, message: str, *, line: int | None = None, **fields: object) -> None:
        super().__init__(message, **fields)  # type: ignore[arg-type]
        self.line = line

    def __str__(self) -> str:
        text = super().__str__()
        return f"line {self.line}: {text}" if self.line is not None else text


class NotFound(InstanceError, LookupError):
    """No running instance has that name (or that instance has ended)."""


class NameConflict(InstanceError):
    """A running (or starting) instance already has that name."""


class Timeout(InstanceError, TimeoutError):
    """A bounded wait (start, readiness, stop, exec) ran out of time."""


class StartError(InstanceError):
    """The instance could not be started; nothing of it is left behind."""


class StartTimeout(StartError, Timeout):
    """The instance did not set up, or its service did not become ready, in time."""


class ExecError(InstanceError):
    """A command could not be started inside an instance (not found, not executable...)."""


class PermissionDenied(InstanceError, PermissionError):
    """The caller may not do this (another user's instance, a root-only feature)."""


class Unsupported(InstanceError):
    """The kernel or host lacks something this needs; the message says what."""


class RegistryError(InstanceError):
    """The instance registry on disk cannot be used (bad permissions, not a directory)."""


class ClusterError(InstanceError):
    """A Dask cluster (``instancelib.dask``) cannot be reached or has no such worker."""


for _cls in (
    InstanceError,
    InvalidArgument,
    InvalidName,
    ImageError,
    BuildError,
    DefinitionError,
    NotFound,
    NameConflict,
    StartError,
    StartTimeout,
    ExecError,
    Timeout,
    PermissionDenied,
    Unsupported,
    RegistryError,
):
    _cls.__module__ = "instancelib"
del _cls
