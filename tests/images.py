"""Images made once per session with the real tools: a busybox SIF (mksquashfs), and
podman's archives.  ``tests/conftest.py`` registers these fixtures for every test directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from instancelib.build.busybox import make_busybox_rootfs
from instancelib.image import sif

STARTSCRIPT = "#!/bin/sh\necho started-from-image\nexec sleep 1000\n"


@pytest.fixture(scope="session")
def image_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="instancelib-images-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_rootfs(image_dir: Path) -> Path:
    return make_busybox_rootfs(image_dir / "rootfs", startscript=STARTSCRIPT,
                               environment={"90-environment.sh": "export FROM_IMAGE=yes\n"},
                               runscript="#!/bin/sh\necho \"runscript $*\"\n")


@pytest.fixture(scope="session")
def squashfs_path(image_dir: Path, busybox_rootfs: Path) -> Path:
    target = image_dir / "root.squashfs"
    subprocess.run(["mksquashfs", str(busybox_rootfs), str(target), "-noappend", "-quiet",
                    "-no-progress", "-all-root"], check=True, stdout=subprocess.DEVNULL)
    return target


@pytest.fixture(scope="session")
def sif_path(image_dir: Path, squashfs_path: Path) -> Path:
    target = image_dir / "busybox.sif"
    sif.write_sif(target, [
        sif.SIFObject(data_type=sif.DATA_DEFFILE, data=b"Bootstrap: busybox\n"),
        sif.SIFObject(data_type=sif.DATA_PARTITION, data=squashfs_path, fs_type=sif.FS_SQUASHFS,
                      part_type=sif.PART_PRIMARY_SYSTEM, arch=sif.host_arch(), alignment=4096),
    ])
    return target


@pytest.fixture(scope="session")
def podman_archives(image_dir: Path, busybox_rootfs: Path) -> Iterator[dict[str, Path]]:
    """``docker-archive``, ``oci-archive`` and ``oci-layout`` of one image, saved by podman.

    The image: the busybox root filesystem imported with ENV, ENTRYPOINT, CMD and
    WORKDIR; podman's storage is private to the fixture (vfs driver, no mounts).
    """
    work = Path(tempfile.mkdtemp(prefix="instancelib-podman-"))
    work.chmod(0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(work / "xdg"))
    (work / "xdg").mkdir(mode=0o700)
    podman = ["podman", "--root", str(work / "storage"), "--runroot", str(work / "run"),
              "--storage-driver", "vfs"]
    try:
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(busybox_rootfs), "-cf", str(tarball), "."], check=True)
        subprocess.run([*podman, "import",
                        "--change", "ENV GREETING=hello",
                        "--change", "ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "--change", 'ENTRYPOINT ["/bin/echo", "entry"]',
                        "--change", 'CMD ["default-arg"]',
                        "--change", "WORKDIR /etc",
                        str(tarball), "localhost/instancelib-test:1"],
                       check=True, env=env, capture_output=True)
        archives = {}
        for kind, fmt, name in (("docker-archive", "docker-archive", "docker.tar"),
                                ("oci-archive", "oci-archive", "oci.tar"),
                                ("oci-layout", "oci-dir", "oci-layout")):
            target = image_dir / name
            subprocess.run([*podman, "save", "--format", fmt, "-o", str(target),
                            "localhost/instancelib-test:1"], check=True, env=env,
                           capture_output=True)
            archives[kind] = target
        subprocess.run(["chmod", "-R", "a+rX", str(image_dir)], check=True)
        yield archives
    finally:
        if os.geteuid() != 0:  # rootless storage belongs to subordinate IDs
            subprocess.run([*podman, "unshare", "rm", "-rf", str(work / "storage")], env=env,
                           capture_output=True, check=False)
        # Rootless podman leaves its pause process (it keeps the user namespace); it is ours.
        for pause in (work / "xdg").rglob("pause.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pause.read_text().strip()), signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
