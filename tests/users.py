"""Two ordinary users for the tests that switch between them (root only).

``scripts/setup`` makes ``ilib-a`` and ``ilib-b`` and ``/opt/instancelib-venv``; the
``shared`` fixture gives them an image and a readable copy of this checkout's package.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from instancelib import InstanceRegistry
from instancelib.build.busybox import make_busybox_rootfs

USER_A, USER_B = "ilib-a", "ilib-b"
VENV_PYTHON = "/opt/instancelib-venv/bin/python"
SLEEPER = "#!/bin/sh\necho started\nexec sleep 1000\n"


def make_shared() -> Path:
    """A world-readable directory with an image and a copy of the package for the users."""
    for user in (USER_A, USER_B):
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.fail(f"user {user} is missing: run scripts/setup (as root) first")
    if not os.access(VENV_PYTHON, os.X_OK):
        pytest.fail(f"{VENV_PYTHON} is missing: run scripts/setup (as root) first")
    directory = Path(tempfile.mkdtemp(prefix="instancelib-isolation-"))
    directory.chmod(0o755)
    shutil.copytree(Path(__file__).resolve().parents[1] / "instancelib",
                    directory / "src" / "instancelib")
    make_busybox_rootfs(directory / "image", startscript=SLEEPER)
    subprocess.run(["chmod", "-R", "a+rX", str(directory)], check=True)
    return directory


def remove_shared(directory: Path) -> None:
    for user in (USER_A, USER_B):
        InstanceRegistry(user=user).stop(force=True)
    shutil.rmtree(directory, ignore_errors=True)


def as_user(user: str, shared: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as ``user`` (with ``IMAGE`` defined)."""
    entry = pwd.getpwnam(user)
    prologue = f"IMAGE = {str(shared / 'image')!r}\n"
    return subprocess.run(
        [VENV_PYTHON, "-c", prologue + code], user=entry.pw_uid, group=entry.pw_gid,
        extra_groups=[], env=user_env(entry, shared), cwd="/", capture_output=True,
        text=True, timeout=60, check=False,
    )


def cli_as(user: str, shared: Path, *args: str) -> subprocess.CompletedProcess[str]:
    entry = pwd.getpwnam(user)
    return subprocess.run(
        [VENV_PYTHON, "-m", "instancelib", *args], user=entry.pw_uid, group=entry.pw_gid,
        extra_groups=[], env=user_env(entry, shared), cwd="/", capture_output=True,
        text=True, timeout=60, check=False,
    )


def user_env(entry: pwd.struct_passwd, shared: Path) -> dict[str, str]:
    """The environment of code run as the user: the shared copy of the package first."""
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(shared / "src"), "PYTHONDONTWRITEBYTECODE": "1"}


