"""The Singularity Image Format (SIF): a pure-Python reader and writer.

A SIF file is a 128-byte global header, a table of fixed-size object
descriptors (585 bytes each, 48 by default, at offset 4096), and the data
objects they describe: the root filesystem (a squashfs partition), the
definition file, labels, signatures, OCI blobs...  All integers are little
endian; structures are packed.  Facts from the format's reference
implementation (github.com/sylabs/sif); the code is ours.

Reading is defensive: a truncated, corrupt or hostile file (bad magic or
version, a descriptor table or object past the end of the file, objects that
overlap, absurd counts, duplicate IDs) raises ``ImageError``, never another
exception, and nothing is ever read past the end of the file.
"""

from __future__ import annotations

import datetime
import itertools
import os
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import attrs

from instancelib.errors import ImageError

__all__ = [
    "DATA_TYPES",
    "SIFDescriptor",
    "SIFHeader",
    "SIFImage",
    "SIFObject",
    "write_sif",
]

HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")
DESCRIPTOR = struct.Struct("<i?IIIqqqqqqq128s384s")
MAGIC = b"SIF_MAGIC\0"
VERSION = "01"
LAUNCH_SCRIPT = "#!/usr/bin/env run-singularity\n"
DESCRIPTORS_OFFSET = 4096
DEFAULT_DESCRIPTORS = 48
GROUP_MASK = 0xF0000000
# The Go zero time, which SIF writes for "no time" (deterministic images).
ZERO_TIME = -62135596800
# Bounds for hostile files: far beyond any real image, small enough to stay safe.
MAX_DESCRIPTORS = 1 << 16

DATA_DEFFILE, DATA_ENVVAR, DATA_LABELS, DATA_PARTITION, DATA_SIGNATURE = range(0x4001, 0x4006)
DATA_GENERIC_JSON, DATA_GENERIC, DATA_CRYPTO_MESSAGE, DATA_SBOM = range(0x4006, 0x400A)
DATA_OCI_ROOT_INDEX, DATA_OCI_BLOB = 0x400A, 0x400B
DATA_TYPES = {
    DATA_DEFFILE: "Def.FILE", DATA_ENVVAR: "Env.Vars", DATA_LABELS: "JSON.Labels",
    DATA_PARTITION: "FS", DATA_SIGNATURE: "Signature", DATA_GENERIC_JSON: "JSON.Generic",
    DATA_GENERIC: "Generic/Raw", DATA_CRYPTO_MESSAGE: "Cryptographic Message",
    DATA_SBOM: "SBOM", DATA_OCI_ROOT_INDEX: "OCI.RootIndex", DATA_OCI_BLOB: "OCI.Blob",
}
FS_SQUASHFS, FS_EXT3, FS_ARCHIVE, FS_RAW, FS_ENCRYPTED_SQUASHFS = 1, 2, 3, 4, 5
FS_TYPES = {FS_SQUASHFS: "Squashfs", FS_EXT3: "Ext3", FS_ARCHIVE: "Archive", FS_RAW: "Raw",
            FS_ENCRYPTED_SQUASHFS: "Encrypted squashfs"}
PART_SYSTEM, PART_PRIMARY_SYSTEM, PART_DATA, PART_OVERLAY = 1, 2, 3, 4
PART_TYPES = {PART_SYSTEM: "System", PART_PRIMARY_SYSTEM: "*System", PART_DATA: "Data",
              PART_OVERLAY: "Overlay"}
HASH_TYPES = {1: "SHA-256", 2: "SHA-384", 3: "SHA-512", 4: "BLAKE2s-256", 5: "BLAKE2b-256"}
FORMAT_TYPES = {1: "OpenPGP", 2: "PEM"}
MESSAGE_TYPES = {0x100: "Clear Signature", 0x200: "RSA-OAEP"}
SBOM_FORMATS = {1: "cyclonedx-json", 2: "cyclonedx-xml", 3: "github-json", 4: "spdx-json",
                5: "spdx-rdf", 6: "spdx-tag-value", 7: "spdx-yaml", 8: "syft-json"}
# SIF architecture codes and the Go names the format uses for them.
ARCHES = {b"01": "386", b"02": "amd64", b"03": "arm", b"04": "arm64", b"05": "ppc64",
          b"06": "ppc64le", b"07": "mips", b"08": "mipsle", b"09": "mips64",
          b"10": "mips64le", b"11": "s390x", b"12": "riscv64"}
ARCH_CODES = {name: code for code, name in ARCHES.items()}
# uname -m → the SIF (Go) architecture name.
MACHINE_ARCHES = {"x86_64": "amd64", "i386": "386", "i686": "386", "aarch64": "arm64",
                  "armv7l": "arm", "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x",
                  "riscv64": "riscv64", "mips64": "mips64", "mips": "mips"}


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def _arch(raw: bytes) -> str:
    return ARCHES.get(raw.rstrip(b"\0"), "unknown")


def host_arch() -> str:
    """The host's architecture in SIF's (Go's) names: amd64, arm64..."""
    machine = os.uname().machine
    return MACHINE_ARCHES.get(machine, machine)


@attrs.frozen(kw_only=True)
class SIFHeader:
    """The global header of a SIF file."""

    launch_script: str
    version: str
    arch: str
    id: uuid.UUID
    created_at: int
    modified_at: int
    descriptors_free: int
    descriptors_total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int


@attrs.frozen(kw_only=True)
class SIFDescriptor:
    """One data object's descriptor (only descriptors in use are kept)."""

    data_type: int
    id: int
    group_id: int  # 0: no group
    linked_id: int  # 0: no link
    linked_is_group: bool
    offset: int
    size: int
    size_with_padding: int
    created_at: int
    modified_at: int
    name: str
    extra: bytes

    @property
    def type_name(self) -> str:
        return DATA_TYPES.get(self.data_type, "Unknown")

    def _ints(self, count: int) -> tuple[int, ...]:
        return struct.unpack_from(f"<{count}i", self.extra)

    @property
    def partition(self) -> tuple[str, str, str]:
        """(filesystem, partition type, architecture) of a partition object."""
        fs_type, part_type = self._ints(2)
        return (FS_TYPES.get(fs_type, "Unknown"), PART_TYPES.get(part_type, "Unknown"),
                _arch(self.extra[8:11]))

    @property
    def is_primary_partition(self) -> bool:
        return self.data_type == DATA_PARTITION and self._ints(2)[1] == PART_PRIMARY_SYSTEM

    @property
    def fs_type(self) -> int:
        return self._ints(1)[0]

    @property
    def signature(self) -> tuple[str, str | None]:
        """(hash type, signing entity fingerprint in hex or None) of a signature object."""
        (hash_type,) = self._ints(1)
        entity = self.extra[4:24]
        fingerprint = entity.hex().upper() if entity.strip(b"\0") else None
        return HASH_TYPES.get(hash_type, "Unknown"), fingerprint

    @property
    def crypto_message(self) -> tuple[str, str]:
        format_type, message_type = self._ints(2)
        return (FORMAT_TYPES.get(format_type, "Unknown"),
                MESSAGE_TYPES.get(message_type, "Unknown"))

    @property
    def sbom_format(self) -> str:
        return SBOM_FORMATS.get(self._ints(1)[0], "unknown")

    @property
    def oci_digest(self) -> str:
        return _text(self.extra.split(b"\0", 1)[0])


@attrs.frozen
class SIFImage:
    """A SIF file: its header and the descriptors of the objects it holds.

    ``SIFImage.open(path)`` reads and checks both; object data is read on
    demand (``read_object``), bounded by the file's size.
    """

    path: str
    header: SIFHeader
    descriptors: tuple[SIFDescriptor, ...]
    file_size: int

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SIFImage:
        """Read and validate the SIF file at ``path``.

        Raises:
            ImageError: the file cannot be read, or is not a valid SIF file
                (the message says what is wrong).
        """
        name = os.fspath(path)
        try:
            with open(name, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                return cls._read(name, f, size)
        except OSError as err:
            raise ImageError("cannot read the SIF file", path=name, errno=err.errno) from err

    @classmethod
    def _read(cls, name: str, f: BinaryIO, size: int) -> SIFImage:
        def corrupt(reason: str) -> ImageError:
            return ImageError(f"{name} is not a valid SIF file: {reason}")

        raw = f.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise corrupt(f"the file is too short for a SIF header ({size} bytes)")
        (launch, magic, version, arch, uid, created, modified, free, total, table_offset,
         table_size, data_offset, data_size) = HEADER.unpack(raw)
        if magic != MAGIC:
            raise corrupt("bad magic (no SIF_MAGIC)")
        if _text(version) != VERSION:
            raise corrupt(f"unsupported SIF version {_text(version)!r} (supported: {VERSION})")
        if not 0 <= total <= MAX_DESCRIPTORS:
            raise corrupt(f"absurd descriptor count {total}")
        if not 0 <= free <= total:
            raise corrupt(f"free descriptor count {free} is not within 0..{total}")
        table_end = table_offset + total * DESCRIPTOR.size
        if table_offset < HEADER.size or table_size < total * DESCRIPTOR.size:
            raise corrupt("the descriptor table is misplaced or too small")
        if table_end > size:
            raise corrupt("the descriptor table runs past the end of the file")
        if not (0 <= data_offset <= size and 0 <= data_size <= size - data_offset):
            raise corrupt("the data section runs past the end of the file")
        header = SIFHeader(
            launch_script=_text(launch), version=_text(version), arch=_arch(arch),
            id=uuid.UUID(bytes=uid), created_at=created, modified_at=modified,
            descriptors_free=free, descriptors_total=total, descriptors_offset=table_offset,
            descriptors_size=table_size, data_offset=data_offset, data_size=data_size,
        )
        f.seek(table_offset)
        table = f.read(total * DESCRIPTOR.size)
        descriptors = []
        for index in range(total):
            fields = DESCRIPTOR.unpack_from(table, index * DESCRIPTOR.size)
            (data_type, used, object_id, group, link, offset, length, padded, d_created,
             d_modified, _uid, _gid, d_name, extra) = fields
            if not used:
                continue
            if not (0 <= offset <= size and 0 <= length <= size - offset):
                raise corrupt(f"object {object_id} runs past the end of the file")
            if offset < table_end and length and offset + length > table_offset:
                raise corrupt(f"object {object_id} overlaps the descriptor table")
            descriptors.append(SIFDescriptor(
                data_type=data_type, id=object_id, group_id=group & ~GROUP_MASK,
                linked_id=link & ~GROUP_MASK, linked_is_group=link & GROUP_MASK == GROUP_MASK,
                offset=offset, size=length, size_with_padding=padded, created_at=d_created,
                modified_at=d_modified, name=_text(d_name), extra=extra,
            ))
        if len(descriptors) > total - free and free:
            raise corrupt(f"{len(descriptors)} descriptors in use, but {free} of {total} free")
        ids = [d.id for d in descriptors]
        if len(set(ids)) != len(ids):
            raise corrupt("two objects share an ID")
        spans = sorted((d.offset, d.offset + d.size, d.id) for d in descriptors if d.size)
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if start < end:
                raise corrupt(f"objects {first} and {second} overlap")
        return cls(name, header, tuple(descriptors), size)

    # -- queries ----------------------------------------------------------------------------

    def descriptor(self, object_id: int) -> SIFDescriptor:
        for descriptor in self.descriptors:
            if descriptor.id == object_id:
                return descriptor
        raise ImageError(f"{self.path} has no object with ID {object_id}")

    def of_type(self, data_type: int) -> list[SIFDescriptor]:
        return [d for d in self.descriptors if d.data_type == data_type]

    def primary_partition(self) -> SIFDescriptor | None:
        """The primary system partition (the root filesystem), if any."""
        for descriptor in self.descriptors:
            if descriptor.is_primary_partition:
                return descriptor
        return None

    def read_object(self, descriptor: SIFDescriptor) -> bytes:
        """The bytes of a data object (its bounds were checked when the file was opened)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(descriptor.offset)
                data = f.read(descriptor.size)
        except OSError as err:
            raise ImageError("cannot read the SIF file", path=self.path,
                             errno=err.errno) from err
        if len(data) != descriptor.size:
            raise ImageError(f"{self.path} was truncated while being read")
        return data


# -- writing ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SIFObject:
    """A data object to write into a SIF file.

    ``data`` is the bytes, or a path whose content is copied.  ``group`` is
    the object group (1 for the usual image objects; 0 for none); ``link``
    another object's ID.  For partitions, ``fs_type``, ``part_type`` and
    ``arch`` describe it; other types may carry their metadata (signature
    hash, SBOM format, OCI digest) as raw ``metadata`` bytes.  ``alignment``
    places the object on a boundary (4096 for filesystems, so they can be
    loop-mounted at their offset).
    """

    data_type: int
    data: bytes | str | os.PathLike[str]
    group: int = 1
    link: int = 0
    name: str = ""
    fs_type: int = 0
    part_type: int = 0
    arch: str = ""
    metadata: bytes = b""
    alignment: int = 1

    def extra(self) -> bytes:
        if self.data_type == DATA_PARTITION:
            code = ARCH_CODES.get(self.arch, b"00") + b"\0"
            return struct.pack("<ii3s", self.fs_type, self.part_type, code)
        return self.metadata

    def size(self) -> int:
        if isinstance(self.data, bytes):
            return len(self.data)
        return os.stat(self.data).st_size


def write_sif(
    path: str | os.PathLike[str],
    objects: Sequence[SIFObject],
    *,
    launch_script: str = LAUNCH_SCRIPT,
    image_id: uuid.UUID | None = None,
    timestamp: int | None = None,
    descriptors: int = DEFAULT_DESCRIPTORS,
) -> None:
    """Write a SIF file holding ``objects`` (in order, IDs from 1).

    ``image_id`` and ``timestamp`` default to a random UUID and now; pass
    ``uuid.UUID(int=0)`` and ``ZERO_TIME`` for a deterministic image.  The
    header's architecture is that of the primary system partition.
    """
    if len(objects) > descriptors:
        raise ValueError(f"{len(objects)} objects do not fit in {descriptors} descriptors")
    now = int(timestamp if timestamp is not None else datetime.datetime.now().timestamp())
    identity = image_id if image_id is not None else uuid.uuid4()
    table_size = descriptors * DESCRIPTOR.size
    data_offset = DESCRIPTORS_OFFSET + table_size
    placed = []
    position = data_offset
    for obj in objects:
        aligned = -(-position // obj.alignment) * obj.alignment
        size = obj.size()
        # SizeWithPadding counts the alignment gap before the object, as the reference does.
        placed.append((obj, aligned, size, aligned - position + size))
        position = aligned + size
    table = bytearray(table_size)
    arch = b"00\0"
    for index, (obj, offset, size, padded) in enumerate(placed):
        group = (obj.group | GROUP_MASK) if obj.group else GROUP_MASK
        DESCRIPTOR.pack_into(
            table, index * DESCRIPTOR.size, obj.data_type, True, index + 1, group, obj.link,
            offset, size, padded, now, now, 0, 0, obj.name.encode()[:128], obj.extra(),
        )
        if obj.data_type == DATA_PARTITION and obj.part_type == PART_PRIMARY_SYSTEM:
            arch = ARCH_CODES.get(obj.arch, b"00") + b"\0"
    header = HEADER.pack(
        launch_script.encode()[:32], MAGIC, VERSION.encode() + b"\0", arch, identity.bytes,
        now, now, descriptors - len(objects), descriptors, DESCRIPTORS_OFFSET, table_size,
        data_offset, position - data_offset,
    )
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(header)
            out.seek(DESCRIPTORS_OFFSET)
            out.write(table)
            for obj, offset, _size, _padded in placed:
                out.seek(offset)
                if isinstance(obj.data, bytes):
                    out.write(obj.data)
                else:
                    with open(obj.data, "rb") as source:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
            out.truncate(position)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
