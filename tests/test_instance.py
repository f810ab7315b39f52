"""The ``Instance`` facade: start, list, exec, stop, its identity and state."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instancelib import (
    Image,
    Instance,
    InstanceRegistry,
    InstanceStatus,
    NotFound,
)
from instancelib.linux import procfs
from tests.helpers import wait_for

SLEEPER = "#!/bin/sh\nexec sleep 1000\n"


def test_start_exec_list_stop(make_image, start, registry):
    image = make_image(startscript=SLEEPER)
    instance = start(image, "web")
    assert instance.is_running()
    assert instance.status is InstanceStatus.RUNNING
    assert [i.name for i in registry.list()] == ["web"]
    assert registry.get("web") == instance
    result = instance.exec(["echo", "hello"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello\n", "")
    instance.stop()
    assert not instance.is_running()
    assert instance.status is InstanceStatus.STOPPED
    assert registry.list() == []
    with pytest.raises(NotFound):
        registry.get("web")


def test_instance_survives_start_and_reports_identity(image, start, registry):
    instance = start(image, "idle")
    stat = procfs.read_stat(instance.pid)
    assert stat is not None and stat.running
    assert instance.image == image
    assert abs(instance.started_at.timestamp() - time.time()) < 60
    assert repr(instance).endswith(f"running, pid {instance.pid}>")
    instance.stop()
    assert repr(instance).endswith("stopped>")


def test_pid_namespace_init_is_pid_1(image, start):
    instance = start(image)
    result = instance.exec(["cat", "/proc/1/cmdline"])
    assert result.stdout.startswith("instancelib-init:")
    ps = instance.exec(["ps"]).stdout.splitlines()
    assert ps[1].split()[0] == "1"
    assert "instancelib-init" in ps[1]
    own_pid = instance.exec(["sh", "-c", "echo $$"]).stdout.strip()
    assert 1 < int(own_pid) < 100


def test_new_uts_and_ipc_namespaces(image, start):
    instance = start(image)
    for kind in ("uts", "ipc", "mnt", "pid"):
        assert os.readlink(f"/proc/{instance.pid}/ns/{kind}") != os.readlink(
            f"/proc/self/ns/{kind}"), kind


def test_idle_instance_without_startscript(image, start):
    instance = start(image)
    assert procfs.children_of(instance.pid) == []
    assert instance.exec(["true"]).returncode == 0


def test_startscript_runs_with_args(make_image, start, registry):
    image = make_image(startscript='#!/bin/sh\necho "args:$#:$1:$2"\nexec sleep 1000\n')
    instance = start(image, args=["one", "two words"])
    wait_for(lambda: "args:2:one:two words" in instance.stdout_path.read_text())


def test_run_true_runs_runscript(make_image, start):
    image = make_image(startscript="#!/bin/sh\necho start\nexec sleep 1000\n",
                       runscript="#!/bin/sh\necho run $1\nexec sleep 1000\n")
    instance = start(image, run=True, args=["x"])
    wait_for(lambda: "run x" in instance.stdout_path.read_text())
    assert "start" not in instance.stdout_path.read_text()


def test_run_without_runscript_runs_sh_with_args(image, start):
    instance = start(image, run=True, args=["-c", "echo from-sh"])
    wait_for(lambda: "from-sh" in instance.stdout_path.read_text())


def test_non_executable_startscript_runs_through_sh(make_image, start, tmp_path):
    image = make_image(startscript="echo via-sh\nexec sleep 1000\n")
    os.chmod(Path(image.path) / ".singularity.d/startscript", 0o644)
    instance = start(image)
    wait_for(lambda: "via-sh" in instance.stdout_path.read_text())


def test_instance_stays_up_idle_after_service_exits(make_image, start):
    instance = start(make_image(startscript="#!/bin/sh\necho done\nexit 7\n"))
    wait_for(lambda: "done" in instance.stdout_path.read_text())
    wait_for(lambda: not procfs.children_of(instance.pid))
    assert instance.is_running()
    assert instance.exec(["true"]).ok


def test_instance_outlives_the_starting_process(image, registry, tmp_path):
    code = (
        "import sys; from instancelib import Instance, InstanceRegistry, Image\n"
        f"Instance.start(Image({image.path!r}), 'child', "
        f"registry=InstanceRegistry({str(registry.root)!r}))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    instance = registry.get("child")
    assert instance.is_running()
    assert instance.exec(["true"]).ok




def test_instance_has_no_public_constructor():
    with pytest.raises(TypeError, match=r"Instance\.start"):
        Instance()


def test_registry_default_root_honours_instancelib_home(monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCELIB_HOME", str(tmp_path / "home"))
    assert InstanceRegistry().root == tmp_path / "home"


def test_image_path_can_be_a_string(image, start):
    assert start(image.path).image == Image(image.path)
