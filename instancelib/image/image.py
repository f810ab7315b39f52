"""``Image``: a container image instancelib can run, recognised by its content.

Kinds:

- ``sandbox``: a directory holding a root filesystem;
- ``sif``: a Singularity Image Format file; its primary system partition
  (a squashfs) is the root filesystem;
- ``squashfs``: a bare squashfs file;
- ``oci-layout``: an OCI image layout directory (``oci-layout``, ``index.json``);
- ``oci-archive``: a tar of an OCI image layout;
- ``docker-archive``: a tar written by ``docker save``/``podman save``.

How the root filesystem reaches an instance (``rootfs_plan``) depends on the
kind and on the caller: a directory is bound; root mounts a squashfs through
a loop device; an ordinary user mounts it with ``squashfuse`` when FUSE is
usable, else uses a copy extracted once with ``unsquashfs`` into the image
cache; OCI images are unpacked once into the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import struct
import subprocess
import tarfile
from typing import TYPE_CHECKING, Any

from instancelib.errors import ImageError, Unsupported
from instancelib.image import cache, sif
from instancelib.linux.userns import has_host_root
from instancelib.verbosity import VERBOSE

if TYPE_CHECKING:
    from instancelib.image.inspect import ImageMetadata

__all__ = ["KINDS", "Image"]

log = logging.getLogger("instancelib")

KINDS = ("sandbox", "sif", "squashfs", "oci-layout", "oci-archive", "docker-archive")
# A directory holding none of these is not a root filesystem.
_ROOTFS_MARKERS = (".singularity.d", "bin", "usr", "etc", "sbin", "lib")
_SQUASHFS_MAGIC = b"hsqs"
_COMPRESSED = (b"\x1f\x8b", b"BZ", b"\xfd7")  # gzip, bzip2, xz (as a tar's wrapper)
_SIF_MAGIC = b"SIF_MAGIC\0"
# What other files are, to say so when refusing them.
_SIGNATURES = (
    (0, b"\x1f\x8b", "a gzip-compressed file"),
    (0, b"BZh", "a bzip2-compressed file"),
    (0, b"\xfd7zXZ\0", "an xz-compressed file"),
    (0, b"(\xb5/\xfd", "a zstd-compressed file"),
    (0, b"\x7fELF", "an ELF executable"),
    (0, b"PK\x03\x04", "a zip archive"),
    (1080, b"\x53\xef", "an ext2/3/4 filesystem image"),
    (0, b"QFI\xfb", "a qcow2 disk image"),
)


class _MovedToBuilder:
    """``Image.build`` moved up to ``instancelib.build_image`` (the builder runs instances)."""

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        raise AttributeError("Image.build is now instancelib.build_image(definition, target, "
                             "...): the same arguments, the same result")


class Image:
    """A container image on the local filesystem.

    Args:
        path: a sandbox directory, a SIF or squashfs file, an OCI image layout
            directory, or an OCI/docker archive (tar).

    Attributes:
        path: the absolute path, as given (symlinks kept) — what ``instance
            list`` shows.
        kind: one of ``KINDS``.

    Raises:
        ImageError: the path does not exist, cannot be read, or is not an
            image instancelib supports (the message says what was found); a
            SIF built for another architecture.
    """

    __slots__ = ("_details", "kind", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._details: dict[str, Any] = {}
        self.kind = _detect(self.path, self._details)

    @classmethod
    def _build_root(cls, path: str | os.PathLike[str]) -> Image:
        """A sandbox being built: bound read-write, mount points created in it (``%post``)."""
        image = cls.__new__(cls)
        image.path = os.path.abspath(os.fspath(path))
        image.kind = "sandbox"
        image._details = {"writable": True}
        return image

    @classmethod
    def _from_record(cls, path: str, kind: str) -> Image:
        """An Image for a running instance's record (no checks: it may be gone by now)."""
        image = cls.__new__(cls)
        image.path = path
        image.kind = kind
        image._details = {}
        return image

    build = _MovedToBuilder()

    def inspect(self) -> ImageMetadata:
        """The image's labels, scripts, environment, definition file and apps.

        What ``apptainer inspect`` shows; ``.to_dict()`` gives its JSON.

        Raises:
            ImageError: the image's metadata cannot be read.
        """
        from instancelib.image.inspect import inspect_image  # noqa: PLC0415

        return inspect_image(self)

    @property
    def sif(self) -> sif.SIFImage | None:
        """The parsed SIF file (kind ``sif``), else None."""
        value = self._details.get("sif")
        return value if isinstance(value, sif.SIFImage) else None

    def rootfs_plan(self) -> dict[str, Any]:
        """How the instance's PID 1 gets at the root filesystem (part of the launch plan).

        May take a while the first time: an ordinary user's squashfs without
        FUSE, and every OCI image, are unpacked into the image cache once.
        """
        real = os.path.realpath(self.path)
        if self.kind == "sandbox":
            return {"kind": "directory", "path": real,
                    "writable": bool(self._details.get("writable"))}
        if self.kind in ("sif", "squashfs"):
            offset, size = self._details["offset"], self._details["size"]
            if has_host_root():
                return {"kind": "squashfs", "path": real, "offset": offset, "size": size}
            if _fuse_usable():
                log.log(VERBOSE, "image %s: mounting its squashfs with squashfuse", self.path)
                return {"kind": "squashfuse", "path": real, "offset": offset, "size": size,
                        "helper": shutil.which("squashfuse")}
            directory, lock = cache.entry(
                _file_key("squashfs", real, offset),
                lambda target: unsquash_into(real, offset, target),
                what=f"image {self.path} (no usable FUSE for squashfuse)",
            )
            return {"kind": "directory", "path": str(directory), "hold": str(lock)}
        from instancelib.image import oci  # noqa: PLC0415 (oci imports this module)

        directory, lock = oci.unpacked(self)
        return {"kind": "directory", "path": str(directory), "hold": str(lock)}

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


# -- detection --------------------------------------------------------------------------------


def _detect(path: str, details: dict[str, Any]) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError("image not found", path=path) from None
    except OSError as err:
        raise ImageError("cannot read the image", path=path, errno=err.errno) from err
    if stat.S_ISDIR(info.st_mode):
        return _detect_directory(path)
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path} is neither a directory nor a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError as err:
        raise ImageError("cannot read the image", path=path, errno=err.errno) from err
    if head[32:42] == _SIF_MAGIC:
        _check_sif(path, details)
        return "sif"
    if head[:4] == _SQUASHFS_MAGIC:
        details["offset"] = 0
        details["size"] = _squashfs_size(head, info.st_size, path)
        return "squashfs"
    if head[257:262] == b"ustar" or (head[:2] in _COMPRESSED and _is_compressed_tar(path)):
        return _detect_archive(path)
    raise ImageError(f"{path} is not a container image: it is {_describe(head, info.st_size)}")


def _detect_directory(path: str) -> str:
    try:
        entries = set(os.listdir(path))
    except OSError as err:
        raise ImageError("cannot list the image directory", path=path, errno=err.errno) from err
    if "oci-layout" in entries and "index.json" in entries:
        return "oci-layout"
    if not entries.intersection(_ROOTFS_MARKERS):
        raise ImageError(
            f"{path} is a directory but not a root filesystem "
            "(it has none of /bin, /usr, /etc, /lib, /sbin or /.singularity.d) "
            "nor an OCI image layout (oci-layout and index.json)"
        )
    return "sandbox"


def _is_compressed_tar(path: str) -> bool:
    """A gzip/bzip2/xz file holding a tar with at least one entry."""
    try:
        with tarfile.open(path, "r:*") as archive:
            return archive.next() is not None
    except (OSError, tarfile.TarError, EOFError):
        return False


def _detect_archive(path: str) -> str:
    try:
        with tarfile.open(path) as archive:
            names = {name.lstrip("./") for name in archive.getnames()}
    except (OSError, tarfile.TarError) as err:
        raise ImageError(f"{path} is a damaged tar archive: {err}") from err
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    raise ImageError(f"{path} is a tar archive but not an image (no oci-layout and index.json, "
                     "no manifest.json)")


def _describe(head: bytes, size: int) -> str:
    if size == 0:
        return "an empty file"
    for offset, magic, what in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return what
    if head.startswith(b"Bootstrap:") or b"\nBootstrap:" in head or head.startswith(b"#"):
        return "a text file (a definition file? build it with instancelib build)"
    return f"a file of {size} bytes of unknown content"


def _squashfs_size(head: bytes, file_size: int, path: str) -> int:
    if len(head) < 48:
        raise ImageError(f"{path} has a truncated squashfs superblock")
    (bytes_used,) = struct.unpack_from("<q", head, 40)
    if not 0 < bytes_used <= file_size:
        raise ImageError(f"{path} has a corrupt squashfs superblock")
    return file_size


def _check_sif(path: str, details: dict[str, Any]) -> None:
    image = sif.SIFImage.open(path)
    details["sif"] = image
    primary = image.primary_partition()
    if primary is None:
        kinds = {d.type_name for d in image.descriptors}
        if "OCI.RootIndex" in kinds:
            raise ImageError(f"{path} is an OCI-SIF image (OCI blobs in a SIF), which is not "
                             "supported")
        raise ImageError(f"{path} is a SIF file without a primary system partition "
                         "(nothing to run)")
    fs_type, _part_type, arch = primary.partition
    if fs_type != "Squashfs":
        raise ImageError(f"{path}: its primary partition is {fs_type}, not squashfs "
                         "(only squashfs root filesystems are supported)")
    if _read_at(path, primary.offset, min(64, primary.size))[:4] != _SQUASHFS_MAGIC:
        raise ImageError(f"{path}: its primary partition does not hold a squashfs filesystem")
    host = sif.host_arch()
    if arch not in ("unknown", host):
        raise ImageError(f"{path} is built for {arch}; this host is {host}")
    details["offset"] = primary.offset
    details["size"] = primary.size


def _read_at(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


# -- provisioning -------------------------------------------------------------------------------


def _fuse_usable() -> bool:
    return shutil.which("squashfuse") is not None and os.access("/dev/fuse", os.R_OK | os.W_OK)


def _file_key(kind: str, path: str, offset: int) -> str:
    """A cache key for a file's content as it is now (path, inode, size and mtime)."""
    info = os.stat(path)
    identity = f"{kind}:{path}:{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"
    return f"{kind}-{hashlib.sha256(f'{identity}:{offset}'.encode()).hexdigest()[:32]}"


def unsquash_into(path: str, offset: int, target: str | os.PathLike[str]) -> None:
    """Extract the squashfs at ``offset`` of ``path`` into the (empty) ``target``."""
    unsquashfs = shutil.which("unsquashfs") or "/usr/bin/unsquashfs"
    if not os.access(unsquashfs, os.X_OK):
        raise Unsupported("unsquashfs is needed to use this image without FUSE "
                          "(Debian package squashfs-tools)")
    # unsquashfs wants to create the directory itself.
    os.rmdir(target)
    result = subprocess.run(
        [unsquashfs, "-no-progress", "-quiet", "-no-xattrs", "-no-exit-code",
         "-o", str(offset), "-d", os.fspath(target), path],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 or not os.path.isdir(target):
        raise ImageError(f"cannot extract the squashfs of {path}: "
                         f"{result.stderr.strip()[-500:] or 'unsquashfs failed'}")
