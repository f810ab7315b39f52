"""examples/systemd's unit, used the way systemd uses a Type=forking service.

systemd is not PID 1 here, so the test does what it would: reads [Service],
expands ${VAR} from Environment=, runs ExecStart as User= in a session of its
own and waits for it to exit 0, reads PIDFile= and checks it names a live
process outside ExecStart's process group and session, notices that process
being killed, and runs ExecStop.  As root, User= is ilib-a (www-data's
stand-in, with the checkout's package); in the unprivileged pass, the user
running the suite.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from instancelib.build.busybox import make_busybox_rootfs
from instancelib.linux import procfs
from tests.users import USER_A, VENV_PYTHON, make_shared, remove_shared

UNIT = Path(__file__).resolve().parents[1] / "examples" / "systemd" / "instancelib-web.service"
HTTPD = "#!/bin/sh\nmkdir -p /tmp/www && echo up > /tmp/www/index.html\n" \
        "exec httpd -f -p 127.0.0.1:{port} -h /tmp/www\n"


def parse_service(text: str) -> dict[str, list[str]]:
    """[Service]'s settings, each key's values in order (as systemd reads them)."""
    section, settings = None, {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


class Unit:
    """The unit's commands, run as systemd would, with the test's paths and user."""

    def __init__(self, settings: dict[str, list[str]], user: pwd.struct_passwd,
                 python: list[str], env: dict[str, str], paths: dict[str, str]) -> None:
        self.settings, self.user, self.python, self.paths = settings, user, python, paths
        self.env = dict(env)
        for assignment in settings.get("Environment", []):
            key, _, value = assignment.partition("=")
            self.env[key] = paths.get(value, value)

    def command(self, key: str) -> tuple[list[str], bool]:
        (line,) = self.settings[key]
        ignore = line.startswith("-")
        line = line.lstrip("-")
        line = re.sub(r"\$\{(\w+)\}", lambda m: self.env[m.group(1)], line)
        for old, new in self.paths.items():
            line = line.replace(old, new)
        argv = line.split()
        assert argv[0].endswith("/instancelib")
        return [*self.python, *argv[1:]], ignore

    def run(self, key: str) -> subprocess.CompletedProcess[str]:
        argv, _ignore = self.command(key)
        kwargs = {} if self.user.pw_uid == os.geteuid() else {
            "user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60,
                              check=False, start_new_session=True, cwd="/", **kwargs)

    def pid_file(self) -> Path:
        (path,) = self.settings["PIDFile"]
        for old, new in self.paths.items():
            path = path.replace(old, new)
        return Path(path)


@pytest.fixture
def unit(tmp_path) -> Iterator[Unit]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = parse_service(UNIT.read_text())
    settings["ExecStart"] = [settings["ExecStart"][0].replace("tcp:8080", f"tcp:{port}")]
    if os.geteuid() == 0:
        shared = make_shared()
        user = pwd.getpwnam(USER_A)
        python = [VENV_PYTHON, "-m", "instancelib"]
        env = {"HOME": "/nonexistent", "USER": user.pw_name, "PATH": "/usr/bin:/bin",
               "PYTHONPATH": str(shared / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        base = Path(tempfile.mkdtemp(prefix="instancelib-unit-"))
        base.chmod(0o755)
    else:
        shared = None
        user = pwd.getpwuid(os.geteuid())
        python = [sys.executable, "-m", "instancelib"]
        env = {**os.environ, "HOME": "/nonexistent"}
        base = tmp_path
    state, runtime = base / "state", base / "run"
    for directory in (state, runtime):  # StateDirectory=, RuntimeDirectory=: the user's
        directory.mkdir(mode=0o700)
        os.chown(directory, user.pw_uid, user.pw_gid)
    image = make_busybox_rootfs(base / "web.sif-sandbox", startscript=HTTPD.format(port=port))
    subprocess.run(["chmod", "-R", "a+rX", str(base / "web.sif-sandbox")], check=True)
    paths = {"/var/lib/instancelib-web": str(state), "/run/instancelib-web": str(runtime),
             "/srv/containers/web.sif": str(image)}
    yield Unit(settings, user, python, env, paths)
    subprocess.run([*python, "instance", "stop", "--all", "--force"], env={
        **env, "INSTANCELIB_HOME": str(state)}, capture_output=True, timeout=60, check=False,
        **({} if user.pw_uid == os.geteuid() else {"user": user.pw_uid,
                                                   "group": user.pw_gid}))
    if shared is not None:
        remove_shared(shared)
        shutil.rmtree(base, ignore_errors=True)


def _alive(pid: int) -> bool:
    stat = procfs.read_stat(pid)
    return stat is not None and stat.running


def test_the_example_unit_is_type_forking_with_a_pid_file():
    settings = parse_service(UNIT.read_text())
    assert settings["Type"] == ["forking"] and settings["User"] == ["www-data"]
    assert "--pid-file /run/instancelib-web/web.pid" in settings["ExecStart"][0]
    assert settings["PIDFile"] == ["/run/instancelib-web/web.pid"]
    assert settings["ExecStop"][0].lstrip("-").endswith("instance stop --timeout 10 web")


def test_the_units_contract_as_systemd_uses_it(unit):
    started = unit.run("ExecStart")
    assert started.returncode == 0, started.stderr
    # ExecStart returned only when the service was up: the PID file is there now,
    # and names a live instance PID 1 outside ExecStart's process group and session.
    pid = int(unit.pid_file().read_text())
    stat = procfs.read_stat(pid, owner=True)
    assert stat is not None and stat.running and stat.comm == procfs.INIT_COMM
    assert os.getpgid(pid) != os.getpgid(0) and os.getsid(pid) != os.getsid(0)
    assert stat.uid == unit.user.pw_uid
    # A killed PID 1 is noticed: the process is gone, the instance no longer listed,
    # and ExecStop (which systemd then runs, its failure ignored by "-") says so.
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
    _argv, ignored = unit.command("ExecStop")
    assert ignored
    stopped = unit.run("ExecStop")
    assert stopped.returncode == 255
    assert stopped.stderr == "FATAL:   no instance found with name web\n"
    # Started again (Restart=on-failure), then stopped by ExecStop: gone, status 0.
    again = unit.run("ExecStart")
    assert again.returncode == 0, again.stderr
    pid = int(unit.pid_file().read_text())
    stopped = unit.run("ExecStop")
    assert stopped.returncode == 0, stopped.stderr
    assert not _alive(pid)


def test_a_service_user_without_a_home_gets_one_fatal_line(unit):
    unit.env.pop("INSTANCELIB_HOME")  # as if the unit had not set it
    started = unit.run("ExecStart")
    assert started.returncode == 255
    lines = started.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL:   "), started.stderr
    assert "/nonexistent/.instancelib" in lines[0] and "INSTANCELIB_HOME" in lines[0]
