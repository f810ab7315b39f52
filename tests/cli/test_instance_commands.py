"""The ``instancelib`` command: Singularity's verbs, output formats and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instancelib import InstanceRegistry


@pytest.fixture
def cli(registry, monkeypatch):
    """Run ``python -m instancelib ARGS`` against the test's registry."""
    monkeypatch.setenv("INSTANCELIB_HOME", str(registry.root))

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "instancelib", *args], capture_output=True,
                              text=True, timeout=60, check=False, **kwargs)

    return run


def test_start_list_exec_stop(cli, make_image, registry):
    image = make_image(startscript="#!/bin/sh\nexec sleep 1000\n")
    started = cli("instance", "start", image.path, "web")
    assert started.returncode == 0, started.stderr
    assert "INFO:    instance started successfully" in started.stderr
    (record,) = registry.records()
    listed = cli("instance", "list")
    assert listed.stdout == (
        "INSTANCE NAME    PID" + " " * (len(str(record.pid)) + 1) + "IP    IMAGE\n"
        + "web" + " " * 14 + str(record.pid) + "    " + " " * 6 + image.path + "\n"
    )
    executed = cli("exec", "instance://web", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (executed.returncode, executed.stdout, executed.stderr) == (7, "out\n", "err\n")
    stopped = cli("instance", "stop", "web")
    assert stopped.returncode == 0
    assert f"Stopping web instance of {image.path} (PID={record.pid})" in stopped.stderr
    assert registry.records() == []


def test_list_json_is_exactly_singularitys_shape(cli, make_image, start):
    instance = start(make_image(), "j1")
    listed = cli("instance", "list", "--json")
    data = json.loads(listed.stdout)
    assert data == {"instances": [{
        "instance": "j1", "pid": instance.pid, "img": instance.image.path, "ip": "",
        "logErrPath": str(instance.stderr_path), "logOutPath": str(instance.stdout_path),
    }]}
    assert listed.stdout.startswith('{\n\t"instances": [\n\t\t{\n\t\t\t"instance": "j1",')
    assert listed.stdout.endswith("\n")


def test_list_empty_json_and_table(cli):
    assert cli("instance", "list", "--json").stdout == '{\n\t"instances": []\n}\n'
    assert cli("instance", "list").stdout == "INSTANCE NAME    PID    IP    IMAGE\n"


def test_list_logs_and_pattern(cli, make_image, start):
    first = start(make_image(), "alpha")
    start(make_image(), "beta")
    listed = cli("instance", "list", "--logs", "al*")
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "NAME", "PID", "LOGS"]
    assert lines[1].split() == ["alpha", str(first.pid), str(first.stderr_path)]
    assert lines[2].split() == [str(first.stdout_path)]
    assert len(lines) == 3


def test_instance_run_uses_the_runscript(cli, make_image, registry):
    image = make_image(runscript="#!/bin/sh\necho \"ran $*\"\nexec sleep 1000\n")
    assert cli("instance", "run", image.path, "r1", "a", "b").returncode == 0
    (record,) = registry.records()
    deadline = time.monotonic() + 5
    while "ran a b" not in Path(record.log_out).read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_start_options(cli, make_image, registry, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    pid_file = tmp_path / "pid"
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=f\nexport QUOTED=\"q\"\n")
    result = cli("instance", "start", "--bind", f"{shared}:/data", "--env", "A=1,B=2",
                 "--env-file", str(env_file), "--hostname", "box", "--writable-tmpfs",
                 "--contain", "--pid-file", str(pid_file), make_image().path, "opts")
    assert result.returncode == 0, result.stderr
    (record,) = registry.records()
    assert pid_file.read_text() == f"{record.pid}\n"
    out = cli("exec", "instance://opts", "sh", "-c",
              "echo $A$B$FROM_FILE$QUOTED; hostname; touch /w && ls /data; ls -A /tmp").stdout
    assert out == "12fq\nbox\n"  # /data and the private /tmp are empty


def test_errors_exit_255_with_one_fatal_line(cli, make_image):
    for args in (["instance", "start", make_image().path, "bad/name"],
                 ["instance", "start", "/no/such/image", "x"],
                 ["instance", "stop", "nothing-here"],
                 ["instance", "stop"],
                 ["exec", "instance://ghost", "true"],
                 ["exec", "not-a-uri", "true"]):
        result = cli(*args)
        assert result.returncode == 255, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("FATAL:   "), (args, result.stderr)


def test_exec_of_a_missing_command_is_255(cli, make_image, start):
    start(make_image(), "e1")
    result = cli("exec", "instance://e1", "no-such-cmd")
    assert result.returncode == 255
    assert "not found" in result.stderr


def test_exec_signal_exit_code(cli, make_image, start):
    start(make_image(), "sig")
    assert cli("exec", "instance://sig", "sh", "-c", "kill -TERM $$").returncode == 128 + 15


def test_run_instance_uri(cli, make_image, start):
    start(make_image(runscript="#!/bin/sh\necho \"runscript:$1\"\nexit 3\n"), "r2")
    result = cli("run", "instance://r2", "arg")
    assert (result.returncode, result.stdout) == (3, "runscript:arg\n")


def test_stop_all_and_signal_option(cli, make_image, start, registry):
    script = "#!/bin/sh\ntrap 'echo term; exit 0' TERM\nwhile :; do sleep 0.05; done\n"
    first = start(make_image(startscript=script), "s1")
    start(make_image(), "s2")
    time.sleep(0.2)
    result = cli("instance", "stop", "--all", "--signal", "TERM", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert registry.records() == []
    assert "term" in first.stdout_path.read_text()


def test_stop_force(cli, make_image, start, registry):
    start(make_image(startscript="#!/bin/sh\ntrap '' INT TERM\nexec sleep 1000\n"), "f1")
    began = time.monotonic()
    assert cli("instance", "stop", "--force", "f1").returncode == 0
    assert time.monotonic() - began < 10
    assert registry.records() == []


def test_ready_option(cli, make_image):
    image = make_image(startscript="#!/bin/sh\nsleep 0.2; touch /run/ok; exec sleep 1000\n")
    result = cli("instance", "start", "--writable-tmpfs", "--ready", "file:/run/ok",
                 image.path, "rd")
    assert result.returncode == 0, result.stderr
    assert cli("exec", "instance://rd", "test", "-e", "/run/ok").returncode == 0
    assert cli("instance", "start", "--ready", "bogus", image.path, "rd2").returncode == 255


def test_python_dash_m_and_console_script_agree(cli):
    # The console script sits next to the interpreter (a venv's or pyenv's bin), else on PATH.
    search = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))
    script = shutil.which("instancelib", path=search)
    assert script is not None
    direct = subprocess.run([script, "instance", "list", "--json"], capture_output=True,
                            text=True, env={**os.environ}, timeout=60, check=False)
    assert direct.returncode == 0
    assert json.loads(direct.stdout) == {"instances": []} or "instances" in direct.stdout


def test_registry_env_var_is_used(cli, registry):
    assert isinstance(registry, InstanceRegistry)
    assert cli("instance", "list").returncode == 0
