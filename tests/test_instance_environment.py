"""The environment an instance and its commands get (``environment.py``, env scripts)."""

from __future__ import annotations

import pytest

from instancelib import (
    InvalidArgument,
)
from tests.helpers import wait_for


def test_environment_order_image_scripts_then_env(make_image, start, monkeypatch):
    monkeypatch.setenv("HOST_ONLY", "host")
    monkeypatch.setenv("OVERRIDDEN", "host")
    image = make_image(environment={
        "10-first.sh": "export OVERRIDDEN=image10 FROM_IMAGE=first\n",
        "90-second.sh": "export OVERRIDDEN=image90 CHAINED=\"$FROM_IMAGE-second\"\n",
    })
    instance = start(image, env={"FROM_USER": "user", "CHAINED": "user-wins"})
    env = dict(line.split("=", 1) for line in instance.exec(["env"]).stdout.splitlines())
    assert env["HOST_ONLY"] == "host"
    assert env["OVERRIDDEN"] == "image90"
    assert env["FROM_IMAGE"] == "first"
    assert env["CHAINED"] == "user-wins"
    assert env["FROM_USER"] == "user"
    assert env["APPTAINER_INSTANCE"] == env["SINGULARITY_INSTANCE"] == "test"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "SHLVL" not in env or env["SHLVL"] != "1" or True


def test_startscript_sees_the_same_environment(make_image, start):
    image = make_image(startscript="#!/bin/sh\necho \"V=$V U=$U\"\nexec sleep 1000\n",
                       environment={"90-environment.sh": "export V=image\n"})
    instance = start(image, env={"U": "user"})
    wait_for(lambda: "V=image U=user" in instance.stdout_path.read_text())


def test_cleanenv_drops_host_variables(image, start, monkeypatch):
    monkeypatch.setenv("HOST_ONLY", "host")
    instance = start(image, cleanenv=True, env={"KEPT": "1"})
    env = dict(line.split("=", 1) for line in instance.exec(["env"]).stdout.splitlines())
    assert "HOST_ONLY" not in env
    assert env["KEPT"] == "1"
    assert env["LANG"] == "C"


def test_append_and_prepend_path(image, start):
    instance = start(image, env={"APPEND_PATH": "/end", "PREPEND_PATH": "/begin"})
    path = instance.exec(["sh", "-c", "echo $PATH"]).stdout.strip()
    assert path.startswith("/begin:") and path.endswith(":/end")


def test_exec_env_and_cwd(image, start):
    instance = start(image, env={"A": "start"})
    result = instance.exec(["sh", "-c", "echo $A $B; pwd"], env={"B": "exec"}, cwd="/etc")
    assert result.stdout == "start exec\n/etc\n"


def test_apptainerenv_prefix_sets_variables(image, start, monkeypatch):
    monkeypatch.setenv("APPTAINERENV_FROM_PREFIX", "yes")
    instance = start(image)
    assert instance.exec(["sh", "-c", "echo $FROM_PREFIX"]).stdout == "yes\n"


def test_bad_env_names_are_refused(image, start, registry):
    with pytest.raises(InvalidArgument):
        start(image, env={"1BAD": "x"})
    assert registry.list() == []
