"""The SIF reader and writer against the format reference's own images and goldens."""

from __future__ import annotations

import functools
import struct
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instancelib import ImageError
from instancelib.cli import siftool
from instancelib.image import sif
from tests.corpus import image_path, sif_corpus

# Images written by the current reference tool (the legacy-signed ones came from older tools).
REPRODUCIBLE = ["empty", "empty-id", "empty-launch-script", "one-group", "one-group-signed-dsse",
                "one-group-signed-pgp", "one-object-crypt-message", "one-object-generic-json",
                "one-object-oci-blob", "one-object-oci-root-index", "one-object-sbom",
                "one-object-time", "two-groups", "two-groups-signed-dsse", "two-groups-signed-pgp"]


def test_primary_partition_of_one_group():
    image = sif.SIFImage.open(image_path("one-group"))
    primary = image.primary_partition()
    assert primary is not None
    assert (primary.id, primary.offset, primary.size) == (2, 36864, 4096)
    assert primary.partition == ("Squashfs", "*System", "386")
    assert image.read_object(primary)[:4] == b"hsqs"
    assert image.header.arch == "386"
    input_squashfs = (sif_corpus() / "test" / "input" / "root.squashfs").read_bytes()
    assert image.read_object(primary) == input_squashfs


def test_signature_linked_to_a_group():
    image = sif.SIFImage.open(image_path("two-groups-signed-pgp"))
    signature = image.descriptor(4)
    assert (signature.linked_id, signature.linked_is_group) == (1, True)
    assert signature.signature == ("SHA-256", "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84")


@pytest.mark.parametrize("name", REPRODUCIBLE)
def test_writer_reproduces_reference_images_byte_for_byte(name, tmp_path):
    source = sif.SIFImage.open(image_path(name))
    objects = []
    for d in source.descriptors:
        partition = d.data_type == sif.DATA_PARTITION
        fs_type, part_type = struct.unpack_from("<ii", d.extra) if partition else (0, 0)
        objects.append(sif.SIFObject(
            data_type=d.data_type, data=source.read_object(d), group=d.group_id,
            link=d.linked_id | (sif.GROUP_MASK if d.linked_is_group else 0), name=d.name,
            fs_type=fs_type, part_type=part_type, arch=d.partition[2] if partition else "",
            metadata=b"" if partition else d.extra.rstrip(b"\0"),
            alignment=4096 if partition else 1,
        ))
    target = tmp_path / "copy.sif"
    sif.write_sif(target, objects, launch_script=source.header.launch_script,
                  image_id=source.header.id, timestamp=source.header.created_at)
    assert target.read_bytes() == image_path(name).read_bytes()


def test_writer_output_reads_back(tmp_path):
    squashfs = tmp_path / "root.squashfs"
    squashfs.write_bytes(b"hsqs" + b"\0" * 5000)
    target = tmp_path / "new.sif"
    sif.write_sif(target, [
        sif.SIFObject(data_type=sif.DATA_DEFFILE, data=b"Bootstrap: scratch\n"),
        sif.SIFObject(data_type=sif.DATA_PARTITION, data=squashfs, fs_type=sif.FS_SQUASHFS,
                      part_type=sif.PART_PRIMARY_SYSTEM, arch="amd64", alignment=4096),
    ], image_id=uuid.UUID(int=7), timestamp=1_700_000_000)
    image = sif.SIFImage.open(target)
    assert image.header.arch == "amd64"
    assert image.header.launch_script == sif.LAUNCH_SCRIPT
    assert image.header.id == uuid.UUID(int=7)
    primary = image.primary_partition()
    assert primary is not None and primary.offset % 4096 == 0
    assert image.read_object(primary) == squashfs.read_bytes()
    assert image.read_object(image.descriptor(1)) == b"Bootstrap: scratch\n"
    assert "2023-11-14 22:13:20 +0000 UTC" in siftool.format_header(image)


# -- corrupt and hostile files -------------------------------------------------------------


def _spoil(tmp_path: Path, offset: int, data: bytes, *, base: str = "one-group") -> Path:
    raw = bytearray(image_path(base).read_bytes())
    raw[offset:offset + len(data)] = data
    target = tmp_path / "bad.sif"
    target.write_bytes(bytes(raw))
    return target


def _descriptor_field(index: int, field: int) -> int:
    """Byte offset of a field in descriptor ``index`` (fields: 0 type, 1 used, 2 id, ...)."""
    offsets = [0, 4, 5, 9, 13, 17, 25, 33, 41, 49, 57, 65, 73, 201]
    return sif.DESCRIPTORS_OFFSET + index * sif.DESCRIPTOR.size + offsets[field]


@pytest.mark.parametrize(("offset", "data", "reason"), [
    (32, b"NOT_MAGIC\0", "bad magic"),
    (42, b"99\0", "unsupported SIF version"),
    (80, struct.pack("<q", 10**12), "free descriptor count"),  # free > total
    (88, struct.pack("<q", 1 << 40), "absurd descriptor count"),
    (88, struct.pack("<q", -1), "absurd descriptor count"),
    (96, struct.pack("<q", 1 << 40), "descriptor table"),
    (104, struct.pack("<q", 10), "descriptor table"),
    (112, struct.pack("<q", 10**9), "data section"),
    (_descriptor_field(1, 5), struct.pack("<q", 10**9), "past the end"),
    (_descriptor_field(1, 6), struct.pack("<q", 10**9), "past the end"),
    (_descriptor_field(1, 5), struct.pack("<q", -5), "past the end"),
    (_descriptor_field(1, 5), struct.pack("<q", 32766), "overlap"),
    (_descriptor_field(1, 5), struct.pack("<q", 5000), "descriptor table"),
    (_descriptor_field(1, 2), struct.pack("<I", 1), "share an ID"),
])
def test_corrupt_files_are_image_errors(tmp_path, offset, data, reason):
    with pytest.raises(ImageError, match=reason):
        sif.SIFImage.open(_spoil(tmp_path, offset, data))


@pytest.mark.parametrize("length", [0, 1, 100, 127, 128, 4096, 20000, 32175])
def test_truncated_files_are_image_errors(tmp_path, length):
    target = tmp_path / "short.sif"
    target.write_bytes(image_path("one-group").read_bytes()[:length])
    with pytest.raises(ImageError):
        sif.SIFImage.open(target)


def test_a_truncated_data_object_is_detected(tmp_path):
    target = tmp_path / "cut.sif"
    target.write_bytes(image_path("one-group").read_bytes()[:38000])
    with pytest.raises(ImageError, match="past the end"):
        sif.SIFImage.open(target)


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        sif.SIFImage.open(tmp_path / "none.sif")


@functools.cache
def _base_bytes() -> bytes:
    return image_path("two-groups-signed-pgp").read_bytes()


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_is_read_safely_or_refused(tmp_path, data):
    """Property: whatever bytes a SIF holds, opening it gives a SIFImage or an ImageError,
    and every object of an image that opens lies inside the file."""
    raw = bytearray(_base_bytes())
    region_end = sif.DESCRIPTORS_OFFSET + 6 * sif.DESCRIPTOR.size  # header + used descriptors
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.one_of(st.integers(0, 127),
                                       st.integers(sif.DESCRIPTORS_OFFSET, region_end)))
        value = data.draw(st.binary(min_size=1, max_size=8))
        raw[position:position + len(value)] = value
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    target = tmp_path / "fuzz.sif"
    target.write_bytes(bytes(raw))
    try:
        image = sif.SIFImage.open(target)
    except ImageError:
        return
    for descriptor in image.descriptors:
        assert 0 <= descriptor.offset <= descriptor.offset + descriptor.size <= len(raw)
        assert len(image.read_object(descriptor)) == descriptor.size
        siftool.format_list(image)
        siftool.format_info(image, descriptor.id)
    siftool.format_header(image)
