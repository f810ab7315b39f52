"""Section scripts: ``%pre``/``%setup`` on the host, ``%post``/``%test`` in an instance.

Running a script inside the image being built is what makes the builder a
client of ``Instance``: it starts one (root inside, the host's network, a
throw-away registry in the build's work directory) and stops it after.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from instancelib.build.progress import BuildProgress, ProgressCallback, stream_command
from instancelib.errors import BuildError
from instancelib.image.deffile import Definition, Script
from instancelib.image.image import Image
from instancelib.instance import Instance
from instancelib.linux.userns import has_host_root
from instancelib.registry import InstanceRegistry

__all__ = ["run_in_instance", "run_on_host"]


def _interpreter(script: Script) -> list[str]:
    words = script.args.split()
    if "-c" in words and words.index("-c") + 1 < len(words):
        return [words[words.index("-c") + 1]]
    return ["/bin/sh"]


def run_on_host(script: Script, env: Mapping[str, str], workdir: Path, what: str,
                 report: ProgressCallback) -> None:
    path = workdir / "host-script.sh"
    path.write_text(script.script)
    stream_command([*_interpreter(script), "-e", str(path)], env, what, report, cwd=str(workdir))


def run_in_instance(root: Path, script: Script, what: str, report: ProgressCallback, workdir: Path,
                *, read_only: bool = False, apps: Definition | None = None) -> None:
    """Run ``script`` in an instance of the image being built (root inside, host network)."""
    script_path = root / ".build-script"
    body = script.script
    if apps is not None:
        body += _app_install_script(apps)
    script_path.write_text(body)
    registry = InstanceRegistry(workdir / "registry")
    image = Image(root) if read_only else Image._build_root(root)
    env = {"APPTAINER_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
           "SINGULARITY_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
           "APPTAINER_ROOTFS": "/", "SINGULARITY_ROOTFS": "/",
           "DEBIAN_FRONTEND": "noninteractive"}
    instance = Instance.start(image, f"build-{uuid.uuid4().hex[:12]}", registry=registry,
                              contain=True, cleanenv=True, env=env,
                              fakeroot=not has_host_root())
    try:
        process = instance.popen([*_interpreter(script), "-e", "/.build-script"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
        assert process.stdout is not None
        tail: list[str] = []
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            report(BuildProgress(what, output=line))
            tail = [*tail[-19:], line]
        process.stdout.close()
        if process.wait() != 0:
            raise BuildError(f"{what} failed with exit status {process.returncode}",
                             detail="\n".join(tail))
    finally:
        instance.stop(force=True)
        script_path.unlink(missing_ok=True)


def _app_install_script(stage: Definition) -> str:
    """Shell for the SCIF apps: their directories, files and %appinstall, in order."""
    lines = []
    for app in stage.app_order:
        base = f"/scif/apps/{app}"
        lines.append(f'mkdir -p "{base}/scif/env" "{base}/bin" "{base}/lib"')
        install = stage.apps.get(f"appinstall {app}")
        if install:
            lines.append(f'(cd "{base}" && {install.strip()}\n)')
    return "\n".join(lines) + ("\n" if lines else "")
