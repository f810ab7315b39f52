"""Installing as users do: a wheel built with ``python -m build``, in a fresh venv, works.

The wheel is built from this checkout and installed with pip into a new virtual
environment (its dependencies come from PyPI); the smoke test then runs the installed
command and starts, execs in and stops an instance with the installed package only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from instancelib.build.busybox import make_busybox_rootfs

CHECKOUT = Path(__file__).resolve().parents[1]
SMOKE = """
import sys
import instancelib
from instancelib import Image, Instance, InstanceRegistry
assert "site-packages" in instancelib.__file__, instancelib.__file__
registry = InstanceRegistry(sys.argv[2])
with Instance.start(Image(sys.argv[1]), "smoke", registry=registry) as instance:
    print(instance.exec(["echo", "inside"]).stdout.strip())
print(len(registry.list()))
"""


def test_a_built_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info
    shutil.copytree(CHECKOUT, source, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".ruff_cache", ".mypy_cache",
        ".pytest_cache"))
    built = subprocess.run([sys.executable, "-m", "build", "--wheel",
                            "--outdir", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("instancelib-*-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "instancelib/py.typed" in names and "instancelib/pytest_plugin.py" in names
    assert not any(name.startswith("tests/") for name in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                                "--disable-pip-version-check", str(wheel)],
                               capture_output=True, text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"),
           "PYTHONDONTWRITEBYTECODE": "1"}
    version = subprocess.run([str(venv / "bin" / "instancelib"), "--version"], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.startswith("instancelib version ")
    image = make_busybox_rootfs(tmp_path / "image")
    smoke = subprocess.run([str(python), "-c", SMOKE, str(image), str(tmp_path / "registry")],
                           env=env, cwd=str(tmp_path), capture_output=True, text=True,
                           timeout=120, check=False)
    assert smoke.returncode == 0, smoke.stderr
    assert smoke.stdout.split() == ["inside", "0"]
