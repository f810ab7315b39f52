"""The instance's filesystem (``linux/container.py``): root, binds, contain, /proc, hostname."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from instancelib import (
    InvalidArgument,
    StartError,
)


def test_root_is_read_only_by_default(image, start):
    instance = start(image)
    result = instance.exec(["touch", "/newfile"])
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr


def test_writable_tmpfs_allows_writes_that_vanish_after_stop(image, start):
    instance = start(image, writable_tmpfs=True)
    assert instance.exec(["sh", "-c", "echo data > /newfile && cat /newfile"]).stdout == "data\n"
    assert not (Path(image.path) / "newfile").exists()
    instance.stop()
    again = start(image, writable_tmpfs=True)
    assert again.exec(["test", "-e", "/newfile"]).returncode == 1


def test_bind_read_write_and_read_only(image, start, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from host")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    instance = start(image, binds=[f"{shared}:/data", f"{readonly}:/ro:ro"])
    assert instance.exec(["cat", "/data/in.txt"]).stdout == "from host"
    assert instance.exec(["sh", "-c", "echo out > /data/out.txt"]).ok
    assert (shared / "out.txt").read_text() == "out\n"
    denied = instance.exec(["touch", "/ro/x"])
    assert denied.returncode != 0 and "Read-only" in denied.stderr


def test_bind_destination_missing_from_image_is_created(image, start, tmp_path):
    source = tmp_path / "deep"
    source.mkdir()
    (source / "f").write_text("x")
    instance = start(image, binds=[f"{source}:/not/in/image"])
    assert instance.exec(["cat", "/not/in/image/f"]).stdout == "x"
    assert not (Path(image.path) / "not").exists()
    # Directories the skeleton supplies keep the image's ownership and mode.
    assert instance.exec(["stat", "-c", "%a", "/tmp"]).stdout.strip() == "1777"


def test_bind_of_a_single_file(image, start, tmp_path):
    source = tmp_path / "config.txt"
    source.write_text("cfg")
    instance = start(image, binds=[f"{source}:/etc/app.conf:ro"])
    assert instance.exec(["cat", "/etc/app.conf"]).stdout == "cfg"


def test_missing_bind_source_fails_before_anything_starts(image, start, registry, tmp_path):
    with pytest.raises(StartError, match="does not exist"):
        start(image, binds=[f"{tmp_path}/nope:/data"])
    assert registry.list() == []
    assert not registry.record_path("test").exists()


def test_malformed_bind_spec_is_refused(image, start):
    with pytest.raises(InvalidArgument):
        start(image, binds=["/a:/b:rx"])


def test_symlinked_mount_point_cannot_escape_the_image(make_image, start, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    image = make_image()
    os.symlink(str(outside), Path(image.path) / "escape")
    source = tmp_path / "src"
    source.mkdir()
    (source / "marker").write_text("m")
    instance = start(image, binds=[f"{source}:/escape"])
    # The link resolves inside the image (to a path the image lacks), never to the host dir.
    assert instance.exec(["cat", "/escape/marker"]).stdout == "m"
    assert list(outside.iterdir()) == []


def test_default_binds_home_tmp_and_etc_files(image, start, tmp_path):
    marker = Path("/tmp") / f"instancelib-test-{os.getpid()}"
    marker.write_text("shared tmp")
    try:
        instance = start(image)
        assert instance.exec(["cat", str(marker)]).stdout == "shared tmp"
        assert instance.exec(["test", "-d", os.path.expanduser("~")]).ok
        hosts = instance.exec(["cat", "/etc/hosts"]).stdout
        assert hosts == Path("/etc/hosts").read_text()
    finally:
        marker.unlink()


def test_contain_gives_private_tmp_home_and_minimal_dev(image, start):
    marker = Path("/tmp") / f"instancelib-contain-{os.getpid()}"
    marker.write_text("x")
    try:
        instance = start(image, contain=True)
        assert instance.exec(["ls", "-A", "/tmp"]).stdout == ""
        assert instance.exec(["ls", "-A", os.path.expanduser("~")]).stdout == ""
        devices = set(instance.exec(["ls", "/dev"]).stdout.split())
        assert {"null", "zero", "random", "urandom", "tty", "pts", "shm"} <= devices
        assert not any(name.startswith(("vd", "sd", "nvme")) for name in devices)
        assert instance.exec(["sh", "-c", "echo ok > /dev/null && echo fine"]).stdout == "fine\n"
    finally:
        marker.unlink()


def test_proc_and_sys_are_mounted(image, start):
    instance = start(image)
    assert instance.exec(["test", "-e", "/proc/self/status"]).ok
    assert instance.exec(["test", "-d", "/sys/kernel"]).ok


def test_hostname(image, start):
    assert start(image, "h1", hostname="inside").exec(["hostname"]).stdout == "inside\n"
    assert start(image, "h2").exec(["hostname"]).stdout.strip() == socket.gethostname()
    with pytest.raises(InvalidArgument):
        start(image, "h3", hostname="bad host")
