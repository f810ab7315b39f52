"""Instances from SIF, squashfs and OCI images: as root and as an ordinary user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from instancelib import Image
from instancelib.linux.userns import has_host_root
from instancelib.verbosity import VERBOSE
from tests.helpers import loop_devices, wait_for


def _attached_to(path) -> set[str]:  # type: ignore[no-untyped-def]
    return {device for device, backing in loop_devices() if backing == str(path)}


def test_instance_from_a_sif(sif_path, start, caplog, monkeypatch, tmp_path):
    caplog.set_level(VERBOSE, logger="instancelib")  # routine notes: VERBOSE (-v)
    monkeypatch.setenv("INSTANCELIB_CACHE", str(tmp_path / "cache"))
    first = start(Image(sif_path), "sif1")
    wait_for(lambda: "started-from-image" in first.stdout_path.read_text())
    result = first.exec(["sh", "-c", "echo $FROM_IMAGE; cat /.singularity.d/startscript"])
    assert result.stdout.startswith("yes\n#!/bin/sh")
    assert first.exec(["touch", "/x"]).returncode != 0  # read-only root
    second = start(Image(sif_path), "sif2")
    messages = "\n".join(r.getMessage() for r in caplog.records)
    if has_host_root():
        devices = _attached_to(sif_path)
        assert len(devices) == 1, "both instances share one loop device"
        assert "mounted through /dev/loop" in messages and "shared" in messages
        first.stop()
        assert _attached_to(sif_path) == devices  # still used by the second
        second.stop()
        assert _attached_to(sif_path) == set()  # stop waited for its release
    else:
        assert "extracted once into the cache" in messages
        assert "using the copy in the cache" in messages
        first.stop()
        second.stop()


def test_instance_from_a_bare_squashfs(squashfs_path, start, monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCELIB_CACHE", str(tmp_path / "cache"))
    instance = start(Image(squashfs_path), writable_tmpfs=True)
    assert instance.exec(["sh", "-c", "echo data > /new && cat /new"]).stdout == "data\n"
    assert instance.run(["x"]).stdout == "runscript x\n"
    instance.stop()
    if has_host_root():
        assert _attached_to(squashfs_path) == set()


def test_unprivileged_sif_uses_squashfuse_when_fuse_is_usable(sif_path, tmp_path):
    """A user in a user namespace (``unshare -Ur``): squashfuse if /dev/fuse is theirs,
    else the extracted copy; either way the chosen way is logged."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=15, stream=sys.stdout, format='%(message)s')\n"
        "from instancelib import Image, Instance, InstanceRegistry\n"
        f"reg = InstanceRegistry({str(tmp_path / 'reg')!r})\n"
        f"i = Instance.start(Image({str(sif_path)!r}), 'fuse', registry=reg)\n"
        "print('EXEC', i.exec(['cat', '/.singularity.d/runscript']).stdout.splitlines()[0])\n"
        "i.stop()\n"
    )
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), INSTANCELIB_CACHE=str(tmp_path / "c"))
    result = subprocess.run([shutil.which("unshare") or "unshare", "-Ur", sys.executable, "-c",
                             code], capture_output=True, text=True, timeout=120, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "EXEC #!/bin/sh" in result.stdout
    if os.access("/dev/fuse", os.R_OK | os.W_OK):
        assert "mounting its squashfs with squashfuse" in result.stdout
        assert "mounted with squashfuse" in result.stdout
    else:
        assert "extracted once into the cache" in result.stdout


def test_instance_from_each_podman_archive(podman_archives, start, monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCELIB_CACHE", str(tmp_path / "cache"))
    for kind, path in podman_archives.items():
        instance = start(Image(path), f"run-{kind}", run=True)
        wait_for(lambda i=instance: "entry default-arg" in i.stdout_path.read_text())
        assert instance.exec(["sh", "-c", "echo $GREETING"]).stdout == "hello\n"
        with_args = instance.run(["a b", "$HOME"])
        assert with_args.stdout == "entry a b $HOME\n"  # arguments replace CMD, unevaluated
        assert instance.exec(["sh", "/.singularity.d/runscript"]).stdout == "entry default-arg\n"
        instance.stop()


def test_oci_runscript_works_in_the_working_directory(podman_archives, start, monkeypatch,
                                                      tmp_path):
    monkeypatch.setenv("INSTANCELIB_CACHE", str(tmp_path / "cache"))
    instance = start(Image(podman_archives["oci-layout"]))
    script = instance.exec(["cat", "/.singularity.d/runscript"]).stdout
    assert 'cd "/etc"' in script
    env = instance.exec(["cat", "/.singularity.d/env/10-docker2singularity.sh"]).stdout
    assert 'export GREETING="${GREETING:-"hello"}"' in env
    assert 'export PATH="/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"' in env


def test_an_archive_is_unpacked_once(podman_archives, start, monkeypatch, tmp_path, caplog):
    caplog.set_level(VERBOSE, logger="instancelib")  # routine notes: VERBOSE (-v)
    monkeypatch.setenv("INSTANCELIB_CACHE", str(tmp_path / "cache"))
    began = time.monotonic()
    start(Image(podman_archives["oci-archive"]), "once1").stop()
    first = time.monotonic() - began
    start(Image(podman_archives["oci-layout"]), "once2").stop()  # the same manifest
    messages = [r.getMessage() for r in caplog.records]
    assert sum("extracted once" in m for m in messages) == 1
    assert sum("using the copy" in m for m in messages) == 1
    assert first > 0
