"""The pid file (``pidfile.py``) for systemd ``Type=forking``."""

from __future__ import annotations


def test_pid_file(image, start, tmp_path):
    pid_file = tmp_path / "web.pid"
    instance = start(image, pid_file=pid_file)
    assert pid_file.read_text() == f"{instance.pid}\n"


def test_pid_file_is_not_written_through_a_symlink(image, start, registry, tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep")
    link = tmp_path / "link.pid"
    link.symlink_to(target)
    instance = start(image, pid_file=link)
    assert target.read_text() == "keep"
    assert not link.is_symlink() and link.read_text() == f"{instance.pid}\n"  # replaced
