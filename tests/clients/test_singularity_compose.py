"""singularity-compose (build, up, ps, exec, logs, down) driving instancelib as ``singularity``.

The project is two services, ``web`` depending on ``db``, built from
definition files.  singularity-compose runs everything through spython's
``singularity`` (our recorder: each command line and our exit status are
checked) and, for a project with ports, through ``sudo`` (a stand-in that runs
its arguments: the test runs as root).  Everything runs in a network
namespace that stands for the host (``unshare --net``): the bridge, the
veths and the traffic live and die there.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import scompose  # noqa: F401  (the test extra: never skipped for want of it)

import instancelib
from tests.clients.recorder import Recorder

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="a project with ports: "
                               "singularity-compose runs it through sudo, which the "
                               "unprivileged pass does not have")

RECIPE = """Bootstrap: busybox
%startscript
    mkdir -p /www
    echo "hi from $(hostname)" > /www/index.html
    echo "serving as $(hostname)"
    exec httpd -f -p 80 -h /www
"""

DRIVER = """
import json, os, socket, subprocess, sys, time
from pathlib import Path
from instancelib import InstanceRegistry
from instancelib.linux import netns
if os.geteuid() == 0:
    netns.bring_up("lo")   # the namespace standing for the host
project = Path(sys.argv[1])
out = {}

def compose(*args):
    done = subprocess.run(["singularity-compose", *args], cwd=project, capture_output=True,
                          text=True, timeout=300)
    return [done.returncode, done.stdout, done.stderr]

def fetch(address, port, seconds=10):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((address, port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                response = b""
                while chunk := s.recv(4096):
                    response += chunk
            return response.decode().split("\\r\\n\\r\\n", 1)[-1]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

try:
%s
finally:
    for instance in InstanceRegistry(layout="singularity").list():
        instance.stop(force=True)
print(json.dumps(out))
"""


def _project(tmp_path: Path, networked: bool) -> Path:
    project = tmp_path / "project"
    for service in ("db", "web"):
        (project / service).mkdir(parents=True)
        (project / service / "Singularity").write_text(RECIPE)
    network = "" if networked else "    network:\n      enable: false\n"
    ports = '    ports:\n      - "8080:80"\n' if networked else ""
    (project / "singularity-compose.yml").write_text(
        'version: "2.0"\ninstances:\n'
        "  db:\n    build:\n      context: ./db\n      recipe: Singularity\n" + network +
        "  web:\n    build:\n      context: ./web\n      recipe: Singularity\n"
        "    depends_on:\n      - db\n" + ports + network)
    return project


def _run(tmp_path: Path, project: Path, body: str, *,
         own_network: bool = True) -> tuple[dict, Recorder]:  # type: ignore[type-arg]
    recorder = Recorder(tmp_path, "singularity")
    (recorder.bindir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')  # root already
    (recorder.bindir / "sudo").chmod(0o755)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER % textwrap.indent(body, "    "))
    compose = Path(sys.executable).with_name("singularity-compose")
    env = dict(os.environ, PATH=f"{recorder.bindir}:{compose.parent}:{os.environ['PATH']}",
               INSTANCELIB_NETWORK_STATE=str(tmp_path / "state"),
               INSTANCELIB_NETWORK_DIR=str(tmp_path / "networks"),
               PYTHONPATH=str(Path(instancelib.__file__).resolve().parents[1]))
    env.pop("SINGULARITY_CONFIGDIR", None)
    prefix = ["unshare", "--net"] if own_network else []
    result = subprocess.run([*prefix, sys.executable, str(script), str(project)],
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), recorder


def _ours(recorder: Recorder) -> list[tuple[int, list[str]]]:
    """Our calls, without spython's --version checks and its leading --quiet."""
    return [(status, argv[1:] if argv[:1] == ["--quiet"] else argv)
            for status, argv in recorder.take() if argv != ["--version"]]


@pytest.fixture
def logs_cleaned():
    home = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".singularity"
    existed = home.exists()
    yield
    if not existed:
        shutil.rmtree(home, ignore_errors=True)


@ROOT_ONLY
def test_a_networked_project_with_ports_and_addresses(tmp_path, logs_cleaned):
    project = _project(tmp_path, networked=True)
    out, recorder = _run(tmp_path, project, """
out["build"] = compose("build")
out["up"] = compose("up")
out["ps"] = compose("ps")
out["exec"] = compose("exec", "web1", "wget", "-qO-", "http://db1/")
out["mapped"] = fetch("127.0.0.1", 8080)
out["logs"] = compose("logs", "web1")
out["down"] = compose("down")
out["left"] = [i.name for i in InstanceRegistry(layout="singularity").list()]
""")
    calls = _ours(recorder)
    assert all(status == 0 for status, _argv in calls), calls
    builds = [argv for _status, argv in calls if argv[0] == "build"]
    assert builds == [["build", str(project / "db" / "db.sif"), "Singularity"],
                      ["build", str(project / "web" / "web.sif"), "Singularity"]]
    starts = [argv for _status, argv in calls if argv[:2] == ["instance", "start"]]
    # db first (web depends on it), each on the bridge with the address it was given.
    assert [argv[-2:] for argv in starts] == [[str(project / "db" / "db.sif"), "db1"],
                                              [str(project / "web" / "web.sif"), "web1"]]
    assert '"IP=10.22.0.2"' in starts[0] and '"IP=10.22.0.3"' in starts[1]
    assert '"portmap=8080:80/tcp"' in starts[1] and "--net" in starts[1]
    assert out["up"][0] == 0 and "FATAL" not in out["up"][2], out["up"]
    assert "db1" in out["ps"][1] and "10.22.0.2" in out["ps"][1]
    assert "web1" in out["ps"][1] and "10.22.0.3" in out["ps"][1]
    assert out["exec"][1] == "hi from db1\n"           # web reaches db by name, on the bridge
    assert out["mapped"] == "hi from web1\n"           # the host reaches web's mapped port
    assert (0, ["exec", "instance://web1", "wget", "-qO-", "http://db1/"]) in calls
    assert "serving as web1" in out["logs"][1], out["logs"]
    assert out["down"][0] == 0 and out["left"] == []
    assert sorted(argv[2] for _s, argv in calls if argv[:2] == ["instance", "stop"]) == [
        "db1", "web1"]


def test_a_project_on_the_hosts_network(tmp_path, logs_cleaned):
    """No ports, so no sudo: as root (in a namespace standing for the host) and as an
    ordinary user (on the host's loopback, on ports that were free)."""
    project = _project(tmp_path, networked=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for service, listen in (("web", port), ("db", port + 1)):  # both on the host's network
        (project / service / "Singularity").write_text(
            RECIPE.replace("-p 80", f"-p 127.0.0.1:{listen}"))
    out, recorder = _run(tmp_path, project, f"""
out["build"] = compose("build")
out["up"] = compose("up")
out["served"] = fetch("127.0.0.1", {port})
out["exec"] = compose("exec", "db1", "hostname")
out["logs"] = compose("logs", "db1")
out["down"] = compose("down")
out["left"] = [i.name for i in InstanceRegistry(layout="singularity").list()]
""", own_network=os.geteuid() == 0)
    calls = _ours(recorder)
    assert all(status == 0 for status, _argv in calls), calls
    starts = [argv for _status, argv in calls if argv[:2] == ["instance", "start"]]
    assert [argv[-1] for argv in starts] == ["db1", "web1"]
    assert not any("--net" in argv for argv in starts)
    assert out["served"] == "hi from web1\n"
    assert out["exec"][1] == "db1\n"
    assert "serving as db1" in out["logs"][1], out["logs"]
    assert out["down"][0] == 0 and out["left"] == []
