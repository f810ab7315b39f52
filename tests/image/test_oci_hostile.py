"""Hostile OCI layouts and docker archives: nothing outside the unpack directory may change.

Each test builds the attack itself (layers written here), unpacks or starts the image
for real, and checks the host side.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from instancelib import Image, ImageError, Instance, InstanceRegistry
from instancelib.build.busybox import make_busybox_rootfs
from instancelib.image import cache, oci
from instancelib.linux import pathwalk
from tests.image.ocihelpers import (
    entry,
    layer_tar,
    make_docker_archive,
    make_layout,
    replace_in_archive,
)


@pytest.fixture(scope="module")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """An uncompressed layer holding a busybox root filesystem (something to start)."""
    root = make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "root")
    buffer = tmp_path_factory.mktemp("layer") / "layer.tar"
    with tarfile.open(buffer, "w") as tar:
        tar.add(root, arcname=".")
    return buffer.read_bytes()


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("INSTANCELIB_CACHE", str(directory))
    return directory


def _image(tmp_path: Path, kind: str, layers: list[bytes], config: dict | None = None) -> Image:
    if kind == "oci-layout":
        return Image(make_layout(tmp_path / f"layout{len(os.listdir(tmp_path))}", layers, config))
    plain = [layer if layer[:2] != b"\x1f\x8b" else _gunzip(layer) for layer in layers]
    return Image(make_docker_archive(tmp_path / f"docker{len(os.listdir(tmp_path))}.tar", plain,
                                     config))


def _gunzip(data: bytes) -> bytes:
    return gzip.decompress(data)


def _snapshot(directory: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every entry under ``directory``: (mode, owner, content or link target)."""
    found: dict[str, tuple[int, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content: bytes | str = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = Path(path).read_bytes()
            else:
                content = b""
            found[os.path.relpath(path, directory)] = (info.st_mode, info.st_uid, content)
    return found


def _cache_entries(cache_dir: Path) -> list[str]:
    rootfs = cache_dir / "rootfs"
    return sorted(p.name for p in rootfs.iterdir() if p.is_dir()) if rootfs.exists() else []


# -- 1. the Singularity layout and metadata never go through an image's links ------------------


@pytest.mark.parametrize("kind", ["oci-layout", "docker-archive"])
def test_layout_files_that_are_links_are_replaced_not_written_through(
        kind, tmp_path, cache_dir, busybox_layer, start):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "labels"
    victim.write_text("keep")
    victim.chmod(0o644)
    hostile = layer_tar([
        ("dir", ".singularity.d", b""), ("dir", ".singularity.d/env", b""),
        ("symlink", ".singularity.d/runscript", str(outside / "created-runscript")),
        ("symlink", ".singularity.d/labels.json", str(victim)),
        ("symlink", ".singularity.d/env/10-docker2singularity.sh", str(outside / "env.sh")),
        ("symlink", ".singularity.d/libs", str(outside / "libs")),
    ])
    before = _snapshot(outside)
    image = _image(tmp_path, kind, [busybox_layer, hostile], {"Cmd": ["echo", "hi"]})
    instance = start(image, "hostile")   # the plain start of the archive
    assert _snapshot(outside) == before
    inside = Path(f"/proc/{instance.pid}/root/.singularity.d")
    assert stat.S_ISREG(os.lstat(inside / "runscript").st_mode)
    assert stat.S_ISREG(os.lstat(inside / "labels.json").st_mode)
    assert stat.S_ISDIR(os.lstat(inside / "libs").st_mode)
    assert instance.run().stdout == "hi\n"


@pytest.mark.parametrize("target_kind", ["file", "directory"])
def test_a_directory_replaced_by_a_link_never_gets_its_mode_through_the_link(
        target_kind, tmp_path, cache_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    if target_kind == "file":
        victim.write_text("x")
        victim.chmod(0o644)
    else:
        victim.mkdir()
        victim.chmod(0o755)
    before = _snapshot(outside), stat.S_IMODE(outside.stat().st_mode)
    layer = layer_tar([entry("dir", "d", mode=0o6777), ("file", "d/inner", "i"),
                       ("symlink", "d", str(victim)), entry("dir", "e", mode=0o6777),
                       ("symlink", "e", "../../../outside/victim")])
    root, _lock = oci.unpacked(_image(tmp_path, "oci-layout", [layer]))
    assert (_snapshot(outside), stat.S_IMODE(outside.stat().st_mode)) == before
    assert os.readlink(root / "d") == str(victim)


def test_mount_points_behind_links_are_made_inside_the_image(tmp_path, cache_dir):
    outside = tmp_path / "outside"
    layer = layer_tar([("symlink", "var", str(outside / "var")),
                       ("symlink", "home", "../../../outside/home"),
                       ("symlink", "tmp", "/nonexistent")])       # dangling: no error either
    root, _lock = oci.unpacked(_image(tmp_path, "oci-layout", [layer]))
    assert not outside.exists()
    for made in (f"{outside}/var/tmp", "/nonexistent", "/outside/home"):  # ".." stops at "/"
        canonical, exists = pathwalk.resolve_in_root(str(root), made)
        assert exists and (root / canonical.lstrip("/")).is_dir(), made


def test_an_image_whose_tmp_is_a_dangling_link_starts(tmp_path, cache_dir, busybox_layer,
                                                      start):
    hostile = layer_tar([("dir", "var", b""), ("symlink", "tmp", "/nonexistent"),
                         ("symlink", "var/tmp", "/also/missing")])
    instance = start(_image(tmp_path, "oci-layout", [busybox_layer, hostile]), "dangling")
    assert instance.exec(["ls", "-d", "/tmp/"]).returncode == 0


def test_writes_through_an_earlier_layers_link_stay_inside(tmp_path, cache_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    base = layer_tar([("symlink", "escape", str(outside)), ("symlink", "up", "../../..")])
    top = layer_tar([("file", "escape/planted", "evil"), ("dir", "up/made", b""),
                     ("hardlink", "escape/linked", "escape/planted")])
    root, _lock = oci.unpacked(_image(tmp_path, "oci-layout", [base, top]))
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "planted").read_text() == "evil"
    assert (root / "made").is_dir()


# -- 2. whiteouts name one entry of their directory ---------------------------------------------


@pytest.mark.parametrize("whiteout", [".wh..", "sub/.wh..", ".wh.", "sub/.wh."])
def test_whiteout_of_dot_or_dot_dot_is_refused_and_removes_nothing(
        whiteout, tmp_path, cache_dir, busybox_layer, start):
    running = start(_image(tmp_path, "oci-layout", [busybox_layer,
                                                    layer_tar([("file", "keep", "k")])]),
                    "bystander")
    entries = _cache_entries(cache_dir)
    hostile = [layer_tar([("dir", "sub", b""), ("file", "sub/x", "x")]),
               layer_tar([(("dir", "sub", b"")), ("file", whiteout, b"")])]
    with pytest.raises(ImageError, match="whiteout"):
        oci.unpacked(_image(tmp_path, "oci-layout", hostile))
    assert _cache_entries(cache_dir) == entries
    assert running.exec(["cat", "/keep"]).stdout == "k"
    assert not [p for p in (cache_dir / "rootfs").iterdir() if p.name.endswith(".tmp")]


# -- 3. digests and bounds -----------------------------------------------------------------------


def test_a_tampered_oci_layer_is_refused_before_anything_is_unpacked(tmp_path, cache_dir):
    good = layer_tar([("file", "data", "good")])
    layout = make_layout(tmp_path / "layout", [good])
    digest = hashlib.sha256(good).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(layer_tar([("file", "data", "evil")]))
    with pytest.raises(ImageError, match="does not match its digest"):
        oci.unpacked(Image(layout))
    assert _cache_entries(cache_dir) == []


def test_a_tampered_docker_archive_layer_is_refused(tmp_path, cache_dir):
    good = layer_tar([("file", "data", "good")], compress=False)
    archive = make_docker_archive(tmp_path / "image.tar", [good])
    name = f"{hashlib.sha256(good).hexdigest()}.tar"
    replace_in_archive(archive, name, layer_tar([("file", "data", "evil")], compress=False))
    with pytest.raises(ImageError, match="diff_id"):
        oci.unpacked(Image(archive))
    assert _cache_entries(cache_dir) == []


def test_a_docker_archive_config_that_does_not_match_its_name_is_refused(tmp_path, cache_dir):
    good = layer_tar([("file", "data", "good")], compress=False)
    archive = make_docker_archive(tmp_path / "image.tar", [good], {"Cmd": ["good"]})
    with tarfile.open(archive) as tar:
        config_name = next(m.name for m in tar.getmembers() if m.name.endswith(".json")
                           and m.name != "manifest.json")
        config = tar.extractfile(config_name).read()  # type: ignore[union-attr]
    replace_in_archive(archive, config_name, config.replace(b'"good"', b'"evil"'))
    with pytest.raises(ImageError, match="does not match its digest"):
        oci.unpacked(Image(archive))


def test_unpacking_is_bounded_by_the_cache_limit(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("INSTANCELIB_CACHE_MAX", "10M")
    bomb = layer_tar([("file", "zeros", b"\0" * (64 << 20))])
    assert len(bomb) < 1 << 20
    with pytest.raises(ImageError, match="more than the image cache may hold"):
        oci.unpacked(_image(tmp_path, "oci-layout", [bomb]))
    assert _disk_use(cache_dir) < 1 << 20


def test_a_layer_of_many_empty_files_counts_too(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("INSTANCELIB_CACHE_MAX", "2M")
    many = layer_tar([("file", f"f{i}", b"") for i in range(5000)])
    with pytest.raises(ImageError, match="more than the image cache may hold"):
        oci.unpacked(_image(tmp_path, "oci-layout", [many]))
    assert _disk_use(cache_dir) < 1 << 20


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd (scripts/setup installs it)")
def test_a_zstd_bomb_is_bounded_too(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("INSTANCELIB_CACHE_MAX", "10M")
    plain = layer_tar([("file", "zeros", b"\0" * (64 << 20))], compress=False)
    bomb = subprocess.run(["zstd", "-c", "-19"], input=plain, capture_output=True,
                          check=True).stdout
    assert len(bomb) < 1 << 20
    with pytest.raises(ImageError, match="more than the image cache may hold"):
        oci.unpacked(_image(tmp_path, "oci-layout", [bomb]))
    assert _disk_use(cache_dir) < 1 << 20


def _disk_use(directory: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(directory):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def test_a_failed_unpack_leaves_no_temporary_and_a_later_one_works(tmp_path, cache_dir):
    layers = [layer_tar([("file", "a", "x")]), layer_tar([("file", ".wh..", b"")])]
    layout = make_layout(tmp_path / "layout", layers)
    with pytest.raises(ImageError):
        oci.unpacked(Image(layout))
    assert list((cache_dir / "rootfs").glob(".*.tmp")) == []
    good, _lock = oci.unpacked(_image(tmp_path, "oci-layout", [layers[0]]))
    assert (good / "a").read_text() == "x"


def test_a_dead_builders_temporary_is_removed(tmp_path, cache_dir):
    image = _image(tmp_path, "oci-layout", [layer_tar([("file", "a", "x")])])
    key = oci.describe(image)
    key[3].close()
    stale = cache.cache_root() / "rootfs" / f".{key[0]}.999999.tmp"
    stale.mkdir(parents=True)
    (stale / "half").write_text("written by a builder that was killed")
    oci.unpacked(image)
    assert not stale.exists()


def test_an_instance_started_from_the_hostile_image_list_is_typed(tmp_path, cache_dir):
    """Every refused image is an ImageError for Instance.start too, leaving no record."""
    registry = InstanceRegistry(tmp_path / "registry")
    image = _image(tmp_path, "oci-layout", [layer_tar([("file", ".wh..", b"")])])
    with pytest.raises(ImageError):
        Instance.start(image, "refused", registry=registry)
    assert registry.list() == []
