"""Resolving paths inside a root with chroot semantics."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from instancelib.linux import pathwalk
from instancelib.linux.pathwalk import create_in_root, open_in_root, resolve_in_root


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/hosts").write_text("h")
    (r / "usr/lib").mkdir(parents=True)
    os.symlink("/usr/lib", r / "lib")                        # absolute, stays inside
    os.symlink("../../../..", r / "etc/up")                  # climbs past the root
    os.symlink("/run/systemd/resolve/stub", r / "etc/resolv.conf")  # dangling
    os.symlink("loop2", r / "loop1")
    os.symlink("loop1", r / "loop2")
    return str(r)


@pytest.mark.parametrize(("path", "expected"), [
    ("/etc/hosts", ("/etc/hosts", True)),
    ("etc//./hosts", ("/etc/hosts", True)),
    ("/lib", ("/usr/lib", True)),
    ("/lib/../etc", ("/usr/etc", False)),  # ".." applies to the link's target
    ("/etc/up", ("/", True)),
    ("/etc/up/etc/hosts", ("/etc/hosts", True)),
    ("/../../etc", ("/etc", True)),
    ("/etc/resolv.conf", ("/run/systemd/resolve/stub", False)),
    ("/missing/a/../b", ("/missing/b", False)),
])
def test_resolve_in_root(root, path, expected):
    assert resolve_in_root(root, path) == expected


def test_link_loop_is_eloop(root):
    with pytest.raises(OSError) as caught:
        resolve_in_root(root, "/loop1")
    assert caught.value.errno == errno.ELOOP


def test_file_in_the_middle_is_enotdir(root):
    with pytest.raises(OSError) as caught:
        resolve_in_root(root, "/etc/hosts/x")
    assert caught.value.errno == errno.ENOTDIR


def test_open_in_root_refuses_links(root):
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(open_in_root(fd, "/etc/hosts"))
        with pytest.raises(OSError) as caught:
            os.close(open_in_root(fd, "/lib/x"))
        assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT)
    finally:
        os.close(fd)


def test_create_in_root_makes_parents_and_files(root):
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        create_in_root(fd, "/a/b/c", directory=True)
        create_in_root(fd, "/a/file", directory=False)
        create_in_root(fd, "/a/file", directory=False)  # idempotent
    finally:
        os.close(fd)
    assert os.path.isdir(os.path.join(root, "a/b/c"))
    assert os.path.isfile(os.path.join(root, "a/file"))


def test_open_directory_follows_links_inside_the_root_and_creates(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("/usr/lib")          # absolute: restarts at the root
    (root / "up").symlink_to("../../..")            # ".." stops at the root
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path, expected in (("lib", root / "usr/lib"), ("up/usr", root / "usr"),
                               ("lib/new/deeper", root / "usr/lib/new/deeper")):
            fd = pathwalk.open_directory(root_fd, path, create=True)
            assert fd is not None
            try:
                assert os.fstat(fd).st_ino == os.stat(expected).st_ino, path
            finally:
                os.close(fd)
        assert pathwalk.open_directory(root_fd, "missing/x") is None
        (root / "file").write_text("")
        with pytest.raises(NotADirectoryError):
            pathwalk.open_directory(root_fd, "file/x")
    finally:
        os.close(root_fd)


def test_open_directory_lets_a_check_refuse_a_link_or_a_directory(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "link").symlink_to("real")
    seen = []

    def check(part, info):
        seen.append((part, stat.S_ISLNK(info.st_mode)))
        if stat.S_ISLNK(info.st_mode):
            raise PermissionError(part)

    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = pathwalk.open_directory(root_fd, "real", flags=os.O_PATH, check=check)
        assert fd is not None
        os.close(fd)
        with pytest.raises(PermissionError):
            pathwalk.open_directory(root_fd, "link", check=check)
    finally:
        os.close(root_fd)
    assert seen == [("real", False), ("link", True)]
