"""Opening images: what is recognised (by content), and the errors for what is not."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from instancelib import Image, ImageError
from instancelib.image import sif
from instancelib.image.image import KINDS
from tests.corpus import sif_corpus


def test_sandbox_directory(make_image):
    image = make_image()
    assert image.kind == "sandbox"
    assert Image(image.path) == image
    assert os.fspath(image) == image.path


def test_sif_squashfs_and_archives_are_recognised(sif_path, squashfs_path, podman_archives,
                                                  tmp_path):
    assert Image(sif_path).kind == "sif"
    assert Image(squashfs_path).kind == "squashfs"
    for kind, path in podman_archives.items():
        assert Image(path).kind == kind
    renamed = tmp_path / "image.tar.whatever"
    shutil.copy(sif_path, renamed)
    assert Image(renamed).kind == "sif"  # by content, not by name


def test_missing_path(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        Image(tmp_path / "missing")


def test_directory_that_is_not_a_rootfs(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ImageError, match="not a root filesystem"):
        Image(tmp_path)


@pytest.mark.parametrize(("content", "said"), [
    (b"", "an empty file"),
    (b"hello world", "unknown content"),
    (gzip.compress(b"x" * 100), "gzip-compressed"),
    (b"\x7fELF" + b"\0" * 100, "ELF executable"),
    (b"\0" * 1080 + b"\x53\xef" + b"\0" * 100, "ext2/3/4 filesystem"),
    (b"Bootstrap: docker\nFrom: debian\n", "definition file"),
])
def test_files_that_are_no_image_say_what_they_are(tmp_path, content, said):
    (tmp_path / "f").write_bytes(content)
    with pytest.raises(ImageError, match=said):
        Image(tmp_path / "f")


def test_tar_without_image_metadata(tmp_path):
    archive = tmp_path / "plain.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ImageError, match="tar archive but not an image"):
        Image(archive)


def test_sif_of_another_architecture_is_refused():
    with pytest.raises(ImageError, match="built for 386"):
        Image(sif_corpus() / "test" / "images" / "one-group.sif")


def test_sif_without_root_filesystem_is_refused():
    with pytest.raises(ImageError, match="without a primary system partition"):
        Image(sif_corpus() / "test" / "images" / "empty.sif")
    with pytest.raises(ImageError, match="OCI-SIF"):
        Image(sif_corpus() / "test" / "images" / "one-object-oci-root-index.sif")


def test_sif_with_an_ext3_root_is_refused(tmp_path):
    target = tmp_path / "ext3.sif"
    sif.write_sif(target, [sif.SIFObject(
        data_type=sif.DATA_PARTITION, data=b"\0" * 2048, fs_type=sif.FS_EXT3,
        part_type=sif.PART_PRIMARY_SYSTEM, arch=sif.host_arch(), alignment=4096)])
    with pytest.raises(ImageError, match="Ext3, not squashfs"):
        Image(target)


def test_sif_whose_partition_is_not_squashfs_is_refused(tmp_path):
    target = tmp_path / "fake.sif"
    sif.write_sif(target, [sif.SIFObject(
        data_type=sif.DATA_PARTITION, data=b"not a squashfs", fs_type=sif.FS_SQUASHFS,
        part_type=sif.PART_PRIMARY_SYSTEM, arch=sif.host_arch(), alignment=4096)])
    with pytest.raises(ImageError, match="does not hold a squashfs"):
        Image(target)


def test_corrupt_sif_is_an_image_error(tmp_path, sif_path):
    damaged = tmp_path / "damaged.sif"
    damaged.write_bytes(sif_path.read_bytes()[:5000])
    with pytest.raises(ImageError, match="not a valid SIF"):
        Image(damaged)


def test_oci_layout_without_an_image_for_this_host(tmp_path):
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "0" * 64,
        "size": 1, "platform": {"architecture": "s390x-nope", "os": "linux"}}]}))
    image = Image(layout)
    assert image.kind == "oci-layout"
    with pytest.raises(ImageError, match="no image for linux/"):
        image.rootfs_plan()


def test_oci_blob_not_matching_its_digest_is_refused(podman_archives, tmp_path):
    layout = tmp_path / "layout"
    shutil.copytree(podman_archives["oci-layout"], layout)
    index = json.loads((layout / "index.json").read_text())
    manifest = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    manifest.chmod(0o644)
    manifest.write_bytes(manifest.read_bytes() + b" ")
    with pytest.raises(ImageError, match="does not match its digest"):
        Image(layout).rootfs_plan()


def test_image_kind_list_is_public():
    assert set(KINDS) == {"sandbox", "sif", "squashfs", "oci-layout", "oci-archive",
                          "docker-archive"}


def test_path_is_absolute_and_kept_as_given(make_image, tmp_path):
    image = make_image()
    link = tmp_path / "link"
    link.symlink_to(image.path)
    assert Image(link).path == str(link)
    assert Path(Image(link).rootfs_plan()["path"]) == Path(image.path).resolve()
