"""examples/systemd's unit, used the way systemd uses a Type=forking service.

systemd is not PID 1 here, so the test does what it would: reads [Service],
expands ${VAR} from Environment=, runs ExecStart as User= in a session of its
own and waits for it to exit 0, reads PIDFile= and checks it names a live
process outside ExecStart's process group and session, notices that process
being killed, and runs ExecStop.  As root, User= is ilib-a (www-data's
stand-in, with the checkout's package), and the unit has a cgroup of its own
in the v2 hierarchy handed to that user, as ``Delegate=yes`` hands it over;
in the unprivileged pass, the user running the suite, in its own cgroup.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
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
from instancelib.cgroups import tree
from instancelib.linux import procfs
from tests.helpers import remove_cgroup_trees
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
                 python: list[str], env: dict[str, str], paths: dict[str, str],
                 *, cgroup: Path | None = None) -> None:
        self.settings, self.user, self.python, self.paths = settings, user, python, paths
        self.cgroup = cgroup  # the unit's own cgroup (v2), as systemd makes it
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
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60,
                              check=False, start_new_session=True, cwd="/",
                              preexec_fn=self._enter)

    def _enter(self) -> None:
        """In the command's process, before exec: into the unit's cgroup, then User=."""
        if self.cgroup is not None:
            with open(self.cgroup / "cgroup.procs", "w") as f:
                f.write("0")
        if self.user.pw_uid != os.geteuid():
            os.setgroups([])
            os.setgid(self.user.pw_gid)
            os.setuid(self.user.pw_uid)

    def run_list(self) -> subprocess.CompletedProcess[str]:
        """``instance list`` as the unit's user, with the unit's environment."""
        return subprocess.run([*self.python, "instance", "list"], env=self.env,
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd="/", preexec_fn=self._enter)

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
    cgroup = _delegated_cgroup(user) if shared is not None else None
    try:
        yield Unit(settings, user, python, env, paths, cgroup=cgroup)
    finally:
        _stop_all(python, env, state, user)
        if cgroup is not None:
            remove_cgroup_trees([cgroup])
        if shared is not None:
            remove_shared(shared)
            shutil.rmtree(base, ignore_errors=True)


def _stop_all(python: list[str], env: dict[str, str], state: Path,
              user: pwd.struct_passwd) -> None:
    subprocess.run([*python, "instance", "stop", "--all", "--force"], env={
        **env, "INSTANCELIB_HOME": str(state)}, capture_output=True, timeout=60, check=False,
        **({} if user.pw_uid == os.geteuid() else {"user": user.pw_uid,
                                                   "group": user.pw_gid}))


def _delegated_cgroup(user: pwd.struct_passwd) -> Path | None:
    """The unit's cgroup as systemd makes it for Delegate=yes and User=: the user's."""
    mount = tree.detect().v2_mount
    if mount is None:
        return None
    directory = Path(mount) / f"instancelib-test-web.service.{secrets.token_hex(3)}"
    directory.mkdir()
    for path in (directory, *(directory / n for n in ("cgroup.procs", "cgroup.subtree_control",
                                                      "cgroup.threads"))):
        os.chown(path, user.pw_uid, user.pw_gid)
    return directory


def _alive(pid: int) -> bool:
    stat = procfs.read_stat(pid)
    return stat is not None and stat.running


def test_the_example_unit_is_type_forking_with_a_pid_file():
    settings = parse_service(UNIT.read_text())
    assert settings["Type"] == ["forking"] and settings["User"] == ["www-data"]
    assert settings["Delegate"] == ["yes"] and "--cgroup-parent caller" in settings["ExecStart"][0]
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
    if unit.cgroup is not None:  # inside the unit's cgroup: its accounting covers it
        own = Path(f"/proc/{pid}/cgroup").read_text()
        assert f"0::/{unit.cgroup.name}/{tree.TREE}/i.{unit.user.pw_uid}." in own
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
    if unit.cgroup is not None:  # what the start made in the unit's cgroup went with it
        assert not (unit.cgroup / tree.TREE).exists()


def test_systemctl_stop_ends_the_instance_in_the_units_cgroup(unit):
    if unit.cgroup is None:
        pytest.skip("root's pass makes the unit's cgroup (a user cannot hand one over)")
    started = unit.run("ExecStart")
    assert started.returncode == 0, started.stderr
    pid = int(unit.pid_file().read_text())
    # systemctl stop with ExecStop failing: KillMode=control-group kills the unit's
    # whole cgroup, which holds the instance; the registry then knows it is gone.
    (unit.cgroup / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)
    listed = unit.run_list()
    assert listed.returncode == 0 and "web" not in listed.stdout, listed


def test_a_service_user_without_a_home_gets_one_fatal_line(unit):
    unit.env.pop("INSTANCELIB_HOME")  # as if the unit had not set it
    started = unit.run("ExecStart")
    assert started.returncode == 255
    lines = started.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL:   "), started.stderr
    assert "/nonexistent/.instancelib" in lines[0] and "INSTANCELIB_HOME" in lines[0]
