"""The launch plan (``launchplan.py``): checked ``StartOptions`` to what PID 1 carries out.

Pure: no instance is started; each case builds a plan for a host environment
given here and checks the mounts, environment, working directory and command.
"""

from __future__ import annotations

import json
import os
import pwd

import pytest

from instancelib import InvalidArgument, StartError
from instancelib.launchplan import SYSTEM_FILE_BINDS, MountOp, build_launch_plan
from instancelib.options import StartOptions

HOME = pwd.getpwuid(os.getuid()).pw_dir
HOST = {"HOME": HOME, "PATH": "/host/bin", "LANG": "en_GB.UTF-8", "TERM": "xterm",
        "EDITOR": "vi", "APPTAINERENV_FROM_PREFIX": "p", "INSTANCELIB_HOME": "/secret"}


# An ordinary user's passwd and group entries, merged by PID 1 into copies of the image's.
ACCOUNTS = [] if os.getuid() == 0 else [("account", "/etc/passwd"), ("account", "/etc/group")]


def _plan(image, **options):  # type: ignore[no-untyped-def]
    return build_launch_plan(image, "plan", StartOptions(**options), host_env=HOST)


def _ops(plan):  # type: ignore[no-untyped-def]
    return [(m.op, m.target) for m in plan.mounts]


@pytest.mark.parametrize(("options", "expected"), [
    ({}, [("proc", "/proc"), ("sysfs", "/sys"), ("bind", "/dev"), ("bind", HOME),
          ("bind", "/tmp"), ("bind", "/var/tmp"), *[("bind", f) for f in SYSTEM_FILE_BINDS],
          *ACCOUNTS]),
    ({"contain": True}, [("proc", "/proc"), ("sysfs", "/sys"), ("minimal_dev", "/dev"),
                         ("tmpfs", HOME), ("tmpfs", "/tmp"), ("tmpfs", "/var/tmp"),
                         *[("bind", f) for f in SYSTEM_FILE_BINDS], *ACCOUNTS]),
])
def test_default_mounts(image, options, expected):
    assert _ops(_plan(image, **options)) == expected


def test_user_binds_come_last_in_their_order(image, tmp_path):
    plan = _plan(image, binds=[f"{tmp_path}:/data:ro", f"{tmp_path}"])
    assert plan.mounts[-2:] == (
        MountOp(op="bind", source=str(tmp_path), target="/data", readonly=True),
        MountOp(op="bind", source=str(tmp_path), target=str(tmp_path), readonly=False))


@pytest.mark.parametrize(("options", "field", "expected"), [
    ({}, "command_kind", "start"),
    ({"run": True}, "command_kind", "run"),
    ({"args": ["-p", "80"]}, "args", ("-p", "80")),
    ({"hostname": "web.local"}, "hostname", "web.local"),
    ({}, "hostname", None),
    ({"writable_tmpfs": True}, "writable_tmpfs", True),
    ({"timeout": 5}, "timeout", 5.0),
    ({"contain": True}, "cwd", (HOME, "/")),
])
def test_plan_fields(image, options, field, expected):
    assert getattr(_plan(image, **options), field) == expected


@pytest.mark.parametrize(("options", "present", "absent"), [
    ({}, {"EDITOR": "vi", "LANG": "en_GB.UTF-8", "TERM": "xterm"}, ("INSTANCELIB_HOME",)),
    ({"cleanenv": True}, {"LANG": "C", "TERM": "xterm"}, ("EDITOR", "INSTANCELIB_HOME")),
])
def test_the_base_environment(image, options, present, absent):
    base = _plan(image, **options).env_base
    assert {key: base.get(key) for key in present} == present
    assert not set(absent) & set(base)
    assert "PATH" not in base or base["PATH"] != "/host/bin"   # reset, never the host's


def test_overrides_from_the_host_prefix_and_env(image):
    plan = _plan(image, env={"MINE": "1", "FROM_PREFIX": "env wins"})
    assert plan.env_overrides == {"FROM_PREFIX": "env wins", "MINE": "1"}
    assert plan.env_runtime["APPTAINER_INSTANCE"] == "plan"


def test_a_missing_bind_source_is_a_start_error(image, tmp_path):
    with pytest.raises(StartError, match="does not exist"):
        _plan(image, binds=[f"{tmp_path}/gone:/x"])


def test_arguments_the_kernel_would_refuse_are_refused_here(image):
    with pytest.raises(InvalidArgument, match="the start script: argument 0"):
        _plan(image, args=["x" * (256 << 10)])


def test_the_plan_crosses_to_pid1_as_json(image):
    wire = _plan(image, args=["a"], hostname="h").to_wire()
    assert json.loads(json.dumps(wire)) == wire
    assert wire["command"] == {"kind": "start", "args": ["a"]} and wire["hostname"] == "h"


def test_an_ordinary_user_gets_their_passwd_and_group_entries(image):
    accounts = [m for m in _plan(image).mounts if m.op == "account"]
    entry = pwd.getpwuid(os.getuid())
    if os.getuid() == 0:
        assert accounts == []  # root inside is the image's root
    else:
        assert [m.target for m in accounts] == ["/etc/passwd", "/etc/group"]
        assert accounts[0].options == (f"{entry.pw_name}:x:{entry.pw_uid}:{entry.pw_gid}:"
                                       f"{entry.pw_gecos}:{entry.pw_dir}:{entry.pw_shell}")
    # fakeroot: root inside, whose entry the image has.
    assert not [m for m in _plan(image, fakeroot=True).mounts if m.op == "account"]
