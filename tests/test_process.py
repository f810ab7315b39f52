"""Commands in an instance (``process.py``): exec, popen, run, their errors and stdio."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from instancelib import (
    ExecError,
    InvalidArgument,
    NotFound,
)
from tests.helpers import instance_pids


def test_exec_exit_status_stderr_and_input(image, start):
    instance = start(image)
    result = instance.exec(["sh", "-c", "cat; echo err >&2; exit 5"], input="piped")
    assert (result.returncode, result.stdout, result.stderr) == (5, "piped", "err\n")
    assert not result.ok


def test_exec_bytes_mode(image, start):
    result = start(image).exec(["printf", "\\377"], text=False)
    assert result.stdout == b"\xff"


def test_exec_of_a_missing_command_is_an_exec_error(image, start):
    instance = start(image)
    with pytest.raises(ExecError, match="not found"):
        instance.exec(["no-such-command"])
    with pytest.raises(ExecError):
        instance.exec(["/etc/passwd"])


def test_exec_in_a_missing_directory_is_an_exec_error(image, start):
    with pytest.raises(ExecError, match=r"working directory"):
        start(image).exec(["true"], cwd="/no/such/dir")


def test_exec_timeout_kills_the_command(image, start):
    instance = start(image)
    with pytest.raises(TimeoutError):
        instance.exec(["sleep", "100"], timeout=0.2)
    assert len(instance_pids(instance)) == 1


@pytest.fixture
def interrupt_in():
    """Raise KeyboardInterrupt in the main thread after some seconds (Ctrl-C in a cell)."""
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("how", ["exec", "run"])
def test_an_interrupted_exec_kills_and_reaps_its_command(make_image, start, interrupt_in, how):
    instance = start(make_image(runscript="#!/bin/sh\nexec sleep 30\n"))
    interrupt_in(0.3)
    with pytest.raises(KeyboardInterrupt):
        if how == "exec":
            instance.exec(["sleep", "30"])
        else:
            instance.run()
    assert len(instance_pids(instance)) == 1  # PID 1 alone: sleep was killed and reaped


def test_a_popen_block_that_raises_kills_its_command(image, start):
    instance = start(image)
    with pytest.raises(RuntimeError), instance.popen(["sleep", "30"]) as process:
        raise RuntimeError("the caller's code failed")
    assert process.returncode == -signal.SIGKILL
    assert len(instance_pids(instance)) == 1


def test_a_popen_block_that_ends_waits_for_its_command(image, start):
    with start(image).popen(["sh", "-c", "sleep 0.2; exit 3"]) as process:
        pass
    assert process.returncode == 3


def test_exec_on_a_stopped_instance_is_not_found(image, start):
    instance = start(image)
    instance.stop()
    with pytest.raises(NotFound):
        instance.exec(["true"])


def test_exec_argv_validation(image, start):
    instance = start(image)
    with pytest.raises(InvalidArgument):
        instance.exec("echo hi")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        instance.exec([])


def test_popen_streams_output(image, start):
    instance = start(image)
    with instance.popen(["sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.05; done"],
                        stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
    assert lines == [b"line1\n", b"line2\n", b"line3\n"]
    assert process.returncode == 0


def test_popen_signals_and_poll(image, start):
    instance = start(image)
    process = instance.popen(["sleep", "100"])
    assert process.poll() is None
    process.terminate()
    assert process.wait(timeout=5) == -signal.SIGTERM
    assert process.poll() == -signal.SIGTERM
    process.kill()  # no effect after it ended


def test_run_executes_the_runscript(make_image, start):
    image = make_image(runscript="#!/bin/sh\necho \"runscript $*\"\n")
    instance = start(image)
    assert instance.run(["a", "b"]).stdout == "runscript a b\n"


def test_a_bad_stdio_argument_leaks_no_pipe(image, start):
    instance = start(image)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(InvalidArgument, match="stdio"):
        instance.popen(["true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr="bogus")
    assert set(os.listdir("/proc/self/fd")) == before
