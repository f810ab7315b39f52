"""``Image``: a container image instancelib can run.

An image is recognised by what it contains, not by its name.  So far one
kind is supported: a *sandbox*, a directory holding a root filesystem (with
or without Singularity's ``/.singularity.d`` metadata).  Other kinds (SIF,
squashfs, OCI layouts and archives) add a ``kind`` and say how their root
filesystem is provided to an instance (``rootfs_plan``).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from instancelib.errors import ImageError

__all__ = ["Image"]

# A directory holding none of these is not a root filesystem.
_ROOTFS_MARKERS = (".singularity.d", "bin", "usr", "etc", "sbin", "lib")
_SIF_MAGIC = b"SIF_MAGIC"


class Image:
    """A container image on the local filesystem.

    Args:
        path: a sandbox directory (a root filesystem).

    Attributes:
        path: the absolute path, as given (symlinks kept) — what ``instance
            list`` shows.
        kind: ``"sandbox"``.

    Raises:
        ImageError: the path does not exist, cannot be read, or is not an
            image instancelib supports (the message says what was found).
    """

    __slots__ = ("kind", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.kind = _detect_kind(self.path)

    @classmethod
    def _from_record(cls, path: str, kind: str) -> Image:
        """An Image for a running instance's record (no checks: it may be gone by now)."""
        image = cls.__new__(cls)
        image.path = path
        image.kind = kind
        return image

    def rootfs_plan(self) -> dict[str, Any]:
        """How the instance's PID 1 gets at the root filesystem (part of the launch plan)."""
        return {"kind": "directory", "path": os.path.realpath(self.path)}

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"Image({self.path!r}, kind={self.kind!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Image):
            return NotImplemented
        return (self.path, self.kind) == (other.path, other.kind)

    def __hash__(self) -> int:
        return hash((self.path, self.kind))


def _detect_kind(path: str) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError("image not found", path=path) from None
    except OSError as err:
        raise ImageError("cannot read the image", path=path, errno=err.errno) from err
    if stat.S_ISDIR(info.st_mode):
        try:
            entries = set(os.listdir(path))
        except OSError as err:
            raise ImageError("cannot list the image directory", path=path,
                             errno=err.errno) from err
        if not entries.intersection(_ROOTFS_MARKERS):
            raise ImageError(
                f"{path} is a directory but not a root filesystem "
                "(it has none of /bin, /usr, /etc, /lib, /sbin or /.singularity.d)"
            )
        return "sandbox"
    if stat.S_ISREG(info.st_mode):
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError as err:
            raise ImageError("cannot read the image", path=path, errno=err.errno) from err
        if head[32:41] == _SIF_MAGIC:
            raise ImageError(f"{path} is a SIF file; this version runs sandbox directories only")
        raise ImageError(f"{path} is a regular file, not a supported image "
                         "(this version runs sandbox directories)")
    raise ImageError(f"{path} is neither a directory nor a regular file")
