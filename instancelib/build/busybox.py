"""Build a tiny root filesystem from the host's static busybox.

Used by the demo and the tests (and, later, by the ``busybox`` bootstrap
agent): a copy of a statically linked busybox, one symlink per applet, the
usual top-level directories, ``/etc/passwd``/``group``, and optionally the
Singularity metadata files (``/.singularity.d/startscript``, ``runscript``,
``env/*.sh``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from instancelib.errors import ImageError

__all__ = ["find_static_busybox", "make_busybox_rootfs"]

_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox")
_DIRECTORIES = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
                "root", "run", "var/tmp", "home", "mnt", ".singularity.d/env")


def find_static_busybox() -> str:
    """Path of a statically linked busybox on the host (Debian: ``busybox-static``)."""
    for candidate in _CANDIDATES:
        if os.path.isfile(candidate) and _is_static(candidate):
            return candidate
    raise ImageError("no statically linked busybox found on the host "
                     "(install it: apt-get install busybox-static)")


def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        header = f.read(4096)
    # An ELF with an interpreter (PT_INTERP) names its loader in the first page.
    return header.startswith(b"\x7fELF") and b"ld-linux" not in header and b"ld-musl" not in header


def make_busybox_rootfs(
    dest: str | os.PathLike[str],
    *,
    busybox: str | None = None,
    startscript: str | None = None,
    runscript: str | None = None,
    environment: Mapping[str, str] | None = None,
    files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Create a busybox root filesystem at ``dest`` (which must not exist yet).

    Args:
        startscript: text of ``/.singularity.d/startscript`` (executable).
        runscript: text of ``/.singularity.d/runscript`` (executable).
        environment: ``{"90-environment.sh": "export A=1\\n"}`` files for
            ``/.singularity.d/env``.
        files: extra files, ``{"/etc/motd": "hello"}``.
    """
    root = Path(dest)
    source = busybox or find_static_busybox()
    root.mkdir(parents=True)
    for directory in _DIRECTORIES:
        (root / directory).mkdir(parents=True, exist_ok=True)
    for sticky in ("tmp", "var/tmp"):
        (root / sticky).chmod(0o1777)
    shutil.copy2(source, root / "bin/busybox")
    applets = subprocess.run([source, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/bin/busybox", link)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                     "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc/hostname").write_text("busybox\n")
    for name, text in (("startscript", startscript), ("runscript", runscript)):
        if text is not None:
            _write(root / ".singularity.d" / name, text, 0o755)
    for name, text in (environment or {}).items():
        _write(root / ".singularity.d/env" / name, text, 0o644)
    for path, content in (files or {}).items():
        _write(root / path.lstrip("/"), content, 0o644)
    return root


def _write(path: Path, content: str | bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    path.chmod(mode)
