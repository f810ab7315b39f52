"""Readiness probes: start() returns only once the service answers."""

from __future__ import annotations

import socket
import time

import pytest

from instancelib import (
    CommandProbe,
    FileProbe,
    InvalidArgument,
    StartError,
    StartTimeout,
    TcpProbe,
    Timeout,
)
from instancelib.readiness import as_probe
from tests.helpers import free_port, instance_processes


def test_tcp_probe_waits_for_the_port(make_image, start):
    port = free_port()
    script = f"#!/bin/sh\nsleep 0.3\nexec httpd -f -p 127.0.0.1:{port} -h /etc\n"
    image = make_image(startscript=script)
    began = time.monotonic()
    instance = start(image, ready=("tcp", port))
    assert time.monotonic() - began >= 0.3
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert instance.is_running()


def test_file_probe_waits_for_a_file_inside(make_image, start):
    image = make_image(startscript="#!/bin/sh\nsleep 0.2\ntouch /run/ready\nexec sleep 1000\n")
    instance = start(image, writable_tmpfs=True, ready=("file", "/run/ready"))
    assert instance.exec(["test", "-e", "/run/ready"]).ok


def test_command_probe_runs_inside(make_image, start):
    image = make_image(startscript="#!/bin/sh\nsleep 0.2\ntouch /run/up\nexec sleep 1000\n")
    instance = start(image, writable_tmpfs=True, ready=["test", "-e", "/run/up"])
    assert instance.exec(["test", "-e", "/run/up"]).ok


def test_callable_probe(make_image, start):
    calls = []

    def probe(instance) -> bool:
        calls.append(instance.name)
        return len(calls) >= 3

    start(make_image(), "cb", ready=probe)
    assert calls == ["cb", "cb", "cb"]


def test_probe_timeout_raises_and_leaves_nothing(make_image, start, registry):
    before = instance_processes()
    with pytest.raises(StartTimeout) as caught:
        start(make_image(startscript="#!/bin/sh\nexec sleep 1000\n"), "slow",
              ready=("file", "/never"), timeout=0.5)
    assert isinstance(caught.value, Timeout) and isinstance(caught.value, StartError)
    assert registry.list() == []
    assert not registry.record_path("slow").exists()
    assert instance_processes() - before == set()


def test_service_failing_before_ready_is_a_start_error_with_its_stderr(make_image, start,
                                                                       registry):
    image = make_image(startscript="#!/bin/sh\necho cannot-bind-port >&2\nexit 4\n")
    with pytest.raises(StartError) as caught:
        start(image, ready=("tcp", free_port()), timeout=10)
    assert "status 4" in str(caught.value)
    assert "cannot-bind-port" in (caught.value.detail or "")
    assert registry.list() == []


@pytest.mark.parametrize("bad", [("tcp", 0), ("tcp", 70000), ("tcp", "80"), ("file", "rel"),
                                 [], "a string", 42])
def test_bad_probe_specs_are_refused(bad):
    with pytest.raises(InvalidArgument):
        as_probe(bad)


def test_probe_objects_compare_and_convert():
    assert as_probe(("tcp", 80)) == TcpProbe(80)
    assert as_probe(("file", "/x")) == FileProbe("/x")
    assert as_probe(["a", "b"]) == CommandProbe(("a", "b"))


# -- a probe means this instance's service ------------------------------------------------------


def test_another_programs_listener_does_not_make_the_instance_ready(make_image, start,
                                                                    registry):
    """The instance's server died ("Address already in use"): the port answers, not for it."""
    port = free_port()
    with socket.socket() as squatter:  # this test's own listener on the host's loopback
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        image = make_image(startscript=f"#!/bin/sh\nhttpd -f -p 127.0.0.1:{port} -h /etc\n"
                                       "exec sleep 1000\n")
        with pytest.raises(StartTimeout):
            start(image, "squatted", ready=("tcp", port), timeout=1)
    assert registry.list() == []


def test_a_listener_inside_its_own_network_namespace_is_the_instances(make_image, start):
    port = free_port()
    with socket.socket() as squatter:  # the host's 127.0.0.1:port is taken, the instance's not
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        image = make_image(startscript=f"#!/bin/sh\nsleep 0.2\n"
                                       f"exec httpd -f -p 127.0.0.1:{port} -h /etc\n")
        instance = start(image, "own-net", network="none", ready=("tcp", port), timeout=10)
        assert instance.exec(["sh", "-c", f"netstat -ltn | grep -c :{port}"]).stdout == "1\n"


@pytest.mark.parametrize("typo", [("http", 80), ("tpc", 8080), ("htpp", "x"), ("File", "/x")])
def test_an_unknown_probe_kind_names_the_kinds_and_runs_nothing(typo, make_image, start,
                                                                 registry):
    before = instance_processes()
    with pytest.raises(InvalidArgument, match=r"unknown probe kind .*: the kinds are tcp, "
                                              r"file .*a command is a list"):
        start(make_image(), "typo", ready=typo)
    assert registry.list() == [] and instance_processes() - before == set()


def test_a_failing_command_probes_output_is_in_the_timeout_error(make_image, start):
    with pytest.raises(StartTimeout) as caught:
        start(make_image(), "probed",
              ready=["sh", "-c", "echo connection refused on 5432 >&2; exit 2"], timeout=1)
    assert "connection refused on 5432" in (caught.value.detail or "")
    assert "exit status 2" in (caught.value.detail or "")
