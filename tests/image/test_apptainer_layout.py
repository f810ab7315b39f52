"""A SIF laid out exactly as Apptainer lays out its own builds, made here from the format's facts.

Apptainer's SIF: launch script ``#!/usr/bin/env run-singularity``, object 1 the
definition file (``Def.FILE``), then its JSON objects by name
(``inspect-metadata.json``, ``JSON.Generic``), then the squashfs root
filesystem (primary system partition, 4096-aligned, the host's architecture).
Inside: ``/.singularity.d`` with ``actions/``, ``env/`` (01-base, 90-environment,
94-appsbase, 95-apps, 99-base, 99-runtimevars), ``libs/``, ``runscript``,
``startscript``, ``test``, ``runscript.help``, ``labels.json``, ``Singularity``,
and the compatibility links ``/environment``, ``/singularity``, ``/.exec``,
``/.run``, ``/.shell``, ``/.test``.  The scripts below are written for this test
(what they do, not Apptainer's text).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from instancelib import Image, Instance, InstanceRegistry
from instancelib.build.busybox import make_busybox_rootfs
from instancelib.image import sif

DEFFILE = b"""Bootstrap: docker
From: busybox:latest

%environment
    export SERVICE_GREETING="hello from apptainer"

%startscript
    exec httpd -f -p 127.0.0.1:${SERVICE_PORT} -h /srv

%runscript
    echo "runscript: $SERVICE_GREETING $*"

%labels
    Maintainer tests
"""

ENV_SCRIPTS = {
    "01-base.sh": "#!/bin/sh\n# the base environment\n",
    "10-docker2singularity.sh": '#!/bin/sh\nexport PATH="/usr/local/sbin:/usr/local/bin:'
                                '/usr/sbin:/usr/bin:/sbin:/bin"\n',
    "90-environment.sh": '#!/bin/sh\n# Custom environment shell code should follow\n\n'
                         '    export SERVICE_GREETING="hello from apptainer"\n',
    "94-appsbase.sh": "#!/bin/sh\n# no apps in this image\n",
    "95-apps.sh": '#!/bin/sh\nif test -n "${SINGULARITY_APPNAME:-}"; then\n'
                  '    if test -f "/scif/apps/${SINGULARITY_APPNAME}/scif/env/90-environment.sh"; '
                  'then\n        . "/scif/apps/${SINGULARITY_APPNAME}/scif/env/90-environment.sh"\n'
                  '    fi\nfi\n',
    "99-base.sh": '#!/bin/sh\nif [ -z "${LD_LIBRARY_PATH:-}" ]; then\n'
                  '    LD_LIBRARY_PATH=/.singularity.d/libs\nelse\n'
                  '    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/.singularity.d/libs"\nfi\n'
                  'PS1="Apptainer> "\nexport LD_LIBRARY_PATH PS1\n',
    "99-runtimevars.sh": '#!/bin/sh\nif [ -n "${SING_USER_DEFINED_PREPEND_PATH:-}" ]; then\n'
                         '    PATH="${SING_USER_DEFINED_PREPEND_PATH}:${PATH}"\nfi\n'
                         'unset SING_USER_DEFINED_PREPEND_PATH\nexport PATH\n',
}
ACTIONS = {
    "exec": '#!/bin/sh\nfor script in /.singularity.d/env/*.sh; do\n'
            '    if [ -f "$script" ]; then . "$script"; fi\ndone\nexec "$@"\n',
    "run": '#!/bin/sh\nfor script in /.singularity.d/env/*.sh; do\n'
           '    if [ -f "$script" ]; then . "$script"; fi\ndone\n'
           'exec /.singularity.d/runscript "$@"\n',
    "shell": '#!/bin/sh\nexec /bin/sh "$@"\n',
    "start": '#!/bin/sh\nexec /.singularity.d/startscript "$@"\n',
    "test": '#!/bin/sh\nexec /.singularity.d/test "$@"\n',
}
LABELS = {
    "Maintainer": "tests",
    "org.label-schema.build-arch": sif.host_arch(),
    "org.label-schema.build-date": "Friday_27_November_2026_12:00:00_UTC",
    "org.label-schema.schema-version": "1.0",
    "org.label-schema.usage.apptainer.version": "1.3.4",
    "org.label-schema.usage.singularity.deffile.bootstrap": "docker",
    "org.label-schema.usage.singularity.deffile.from": "busybox:latest",
}


def _apptainer_rootfs(root: Path) -> Path:
    make_busybox_rootfs(root)
    meta = root / ".singularity.d"
    for directory in ("actions", "env", "libs"):
        (meta / directory).mkdir(parents=True, exist_ok=True)
    for name, text in ENV_SCRIPTS.items():
        (meta / "env" / name).write_text(text)
        (meta / "env" / name).chmod(0o755)
    for name, text in ACTIONS.items():
        (meta / "actions" / name).write_text(text)
        (meta / "actions" / name).chmod(0o755)
    scripts = {
        "runscript": '#!/bin/sh\n\n    echo "runscript: $SERVICE_GREETING $*"\n',
        "startscript": "#!/bin/sh\n\n    exec httpd -f -p 127.0.0.1:${SERVICE_PORT} -h /srv\n",
        "test": "#!/bin/sh\n\n",
    }
    for name, text in scripts.items():
        (meta / name).write_text(text)
        (meta / name).chmod(0o755)
    (meta / "labels.json").write_text(json.dumps(LABELS, indent=4))
    (meta / "Singularity").write_bytes(DEFFILE)
    (root / "srv").mkdir(exist_ok=True)
    (root / "srv/index.html").write_text("apptainer-layout\n")
    for link, target in ((".exec", ".singularity.d/actions/exec"),
                         (".run", ".singularity.d/actions/run"),
                         (".shell", ".singularity.d/actions/shell"),
                         (".test", ".singularity.d/actions/test"),
                         ("environment", ".singularity.d/env/90-environment.sh"),
                         ("singularity", ".singularity.d/runscript")):
        (root / link).symlink_to(target)
    return root


def _inspect_metadata() -> bytes:
    attributes = {
        "environment": {"/.singularity.d/env/10-docker2singularity.sh":
                        ENV_SCRIPTS["10-docker2singularity.sh"].rstrip("\n"),
                        "/.singularity.d/env/90-environment.sh":
                        ENV_SCRIPTS["90-environment.sh"].rstrip("\n")},
        "labels": LABELS,
        "runscript": '#!/bin/sh\n\n    echo "runscript: $SERVICE_GREETING $*"',
        "deffile": DEFFILE.decode().rstrip("\n"),
        "startscript": "#!/bin/sh\n\n    exec httpd -f -p 127.0.0.1:${SERVICE_PORT} -h /srv",
    }
    return json.dumps({"data": {"attributes": attributes}, "type": "container"},
                      indent="\t").encode()


@pytest.fixture(scope="module")
def apptainer_sif(image_dir: Path) -> Path:
    root = _apptainer_rootfs(image_dir / "apptainer-rootfs")
    squashfs = image_dir / "apptainer.squashfs"
    subprocess.run(["mksquashfs", str(root), str(squashfs), "-noappend", "-quiet",
                    "-no-progress", "-all-root"], check=True, stdout=subprocess.DEVNULL)
    target = image_dir / "apptainer-layout.sif"
    sif.write_sif(target, [
        sif.SIFObject(data_type=sif.DATA_DEFFILE, data=DEFFILE),
        sif.SIFObject(data_type=sif.DATA_GENERIC_JSON, data=_inspect_metadata(),
                      name="inspect-metadata.json"),
        sif.SIFObject(data_type=sif.DATA_PARTITION, data=squashfs, fs_type=sif.FS_SQUASHFS,
                      part_type=sif.PART_PRIMARY_SYSTEM, arch=sif.host_arch(), alignment=4096),
    ], launch_script="#!/usr/bin/env run-singularity\n")
    target.chmod(0o644)
    return target


def test_the_sif_reads_as_apptainers(apptainer_sif):
    image = Image(apptainer_sif)
    assert image.kind == "sif"
    parsed = image.sif
    assert parsed is not None
    assert [(d.id, d.type_name) for d in parsed.descriptors] == [
        (1, "Def.FILE"), (2, "JSON.Generic"), (3, "FS")]
    assert parsed.descriptors[1].name == "inspect-metadata.json"
    assert parsed.header.arch == sif.host_arch()
    listing = subprocess.run([sys.executable, "-m", "instancelib", "sif", "list",
                              str(apptainer_sif)], capture_output=True, text=True, check=True)
    assert f"FS (Squashfs/*System/{sif.host_arch()})" in listing.stdout


def test_the_whole_lifecycle(apptainer_sif, tmp_path, monkeypatch):
    monkeypatch.setenv("INSTANCELIB_CACHE", str(tmp_path / "cache"))
    registry = InstanceRegistry(tmp_path / "registry")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = Instance.start(Image(apptainer_sif), "apptainer", registry=registry,
                              env={"SERVICE_PORT": str(port)}, ready=("tcp", port), timeout=30)
    try:
        # The startscript serves; the image's environment scripts ran, in order.
        page = instance.exec(["wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/"])
        assert page.stdout == "apptainer-layout\n", page.stderr
        env = instance.exec(["sh", "-c", 'echo "$SERVICE_GREETING|$LD_LIBRARY_PATH|$PS1"'])
        greeting, libraries, prompt = env.stdout.rstrip("\n").split("|")
        assert greeting == "hello from apptainer" and prompt == "Apptainer> "
        assert "/.singularity.d/libs" in libraries.split(":")
        assert instance.run(["a", "b"]).stdout == "runscript: hello from apptainer a b\n"
        assert instance.exec(["/.exec", "echo", "via-action"]).stdout == "via-action\n"
        assert instance.exec(["cat", "/environment"]).stdout.startswith("#!/bin/sh")
        ps = instance.exec(["ps", "-o", "pid,args"]).stdout
        assert f"httpd -f -p 127.0.0.1:{port}" in ps
        assert [i.name for i in registry.list()] == ["apptainer"]
        listed = subprocess.run([sys.executable, "-m", "instancelib", "instance", "list",
                                 "--json"], capture_output=True, text=True, check=True,
                                env=dict(os.environ, INSTANCELIB_HOME=str(registry.root)))
        (entry,) = json.loads(listed.stdout)["instances"]
        assert entry["img"] == str(apptainer_sif) and entry["pid"] == instance.pid
    finally:
        instance.stop()
    assert not instance.is_running()
    assert registry.list() == []


def test_inspect_uses_the_metadata_object(apptainer_sif):
    metadata = Image(apptainer_sif).inspect()
    assert metadata.labels == LABELS
    assert metadata.deffile == DEFFILE.decode().rstrip("\n")
    assert metadata.startscript.endswith("httpd -f -p 127.0.0.1:${SERVICE_PORT} -h /srv")
    assert list(metadata.environment) == ["/.singularity.d/env/10-docker2singularity.sh",
                                          "/.singularity.d/env/90-environment.sh"]
    assert metadata.to_dict() == json.loads(_inspect_metadata())
