"""Bad input a caller can give: a typed error, a clear message, nothing left behind.

Timeouts that are not finite numbers, arguments and environments larger than one
datagram (and larger than the kernel takes), CPU quotas below the kernel's minimum.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from instancelib import InstanceRegistry, InvalidArgument, Limits
from instancelib.cgroups.resources import V2
from tests.helpers import wait_for

SLEEPER = "#!/bin/sh\nexec sleep 1000\n"
BAD_SECONDS = [float("nan"), float("inf"), float("-inf"), -1, "5", True, 1e300]


def _cli(registry: InstanceRegistry, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "instancelib", *args], capture_output=True,
                          text=True, check=False, timeout=60,
                          env=dict(os.environ, INSTANCELIB_HOME=str(registry.root)))


@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
def test_timeouts_that_are_not_finite_seconds_are_refused(value, make_image, start, registry):
    with pytest.raises(InvalidArgument, match="timeout"):
        start(make_image(), "bad", timeout=value)
    assert registry.list() == []
    instance = start(make_image(startscript=SLEEPER), "good")
    for call in (lambda: instance.stop(timeout=value), lambda: instance.wait(value),
                 lambda: instance.exec(["true"], timeout=value),
                 lambda: next(instance.stats(stream=True, interval=value))):
        with pytest.raises(InvalidArgument):
            call()
    assert instance.is_running()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_the_cli_refuses_them_with_one_fatal_line(value, make_image, registry):
    image = make_image(startscript=SLEEPER)
    for args in (("instance", "start", f"--timeout={value}", image.path, "bad"),
                 ("instance", "stop", f"--timeout={value}", "--all")):
        result = _cli(registry, *args)
        assert result.returncode == 255, (args, result.stderr)
        assert result.stderr.startswith("FATAL:") and result.stderr.count("\n") == 1, \
            result.stderr
    assert registry.list() == []


def test_arguments_and_environments_larger_than_a_datagram_work(make_image, start):
    script = '#!/bin/sh\necho "${#1} ${#2} ${#3} ${#BIG}"\nexec sleep 1000\n'
    args = ["a" * 100_000, "b" * 100_000, "c" * 100_000]
    instance = start(make_image(startscript=script), "large", args=args,
                     env={"BIG": "x" * 120_000})
    assert wait_for(lambda: list(instance.logs())) == ["100000 100000 100000 120000"]
    result = instance.exec(["sh", "-c", 'echo "${#BIG} ${#MORE} $#"', "sh", *args[:2]],
                           env={"MORE": "y" * 120_000})
    assert result.stdout == "120000 120000 2\n"


@pytest.mark.parametrize("where", ["argument", "variable"])
def test_what_the_kernel_would_refuse_is_refused_before_anything_runs(
        where, make_image, start, registry):
    huge = "z" * 200_000
    kwargs = {"args": [huge]} if where == "argument" else {"env": {"HUGE": huge}}
    with pytest.raises(InvalidArgument, match="at most 131071 bytes"):
        start(make_image(startscript=SLEEPER), "huge", **kwargs)
    assert registry.list() == []
    instance = start(make_image(startscript=SLEEPER), "fine")
    with pytest.raises(InvalidArgument, match="at most 131071 bytes"):
        if where == "argument":
            instance.exec(["echo", huge])
        else:
            instance.exec(["true"], env={"HUGE": huge})
    many = [f"{'m' * 120_000}{i}" for i in range(40)]   # each fine, 4.8 MB in all
    with pytest.raises(InvalidArgument, match="ARG_MAX"):
        instance.exec(["echo", *many])
    assert instance.exec(["true"]).returncode == 0


@pytest.mark.parametrize("cpus", [1e-9, 0.001, 0.0099])
def test_a_cpu_quota_below_the_kernels_minimum_is_refused(cpus, make_image, registry):
    with pytest.raises(InvalidArgument, match="smallest is 1000 µs"):
        Limits(cpus=cpus)
    result = _cli(registry, "instance", "start", "--cpus", str(cpus), make_image().path, "q")
    assert result.returncode == 255 and "smallest is 1000" in result.stderr
    assert [(s.filename, s.value) for s in V2.settings(Limits(cpus=0.01), lambda c, f: False)] \
        == [("cpu.max", "1000 100000")]
