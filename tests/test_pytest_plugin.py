"""The pytest plugin (``instancelib.pytest_plugin``), run through pytest's own ``pytester``."""

from __future__ import annotations

import pytest

from instancelib.build.busybox import make_busybox_rootfs
from tests.helpers import instance_processes

pytest_plugins = ["pytester"]

HTTPD = "#!/bin/sh\nmkdir -p /tmp/www && echo hello > /tmp/www/index.html\n" \
        "echo serving on $PORT\nexec httpd -f -p 127.0.0.1:$PORT -h /tmp/www\n"


@pytest.fixture
def project(pytester, tmp_path):
    """A project whose conftest hands its tests a busybox image with a web server."""
    image = make_busybox_rootfs(tmp_path / "web", startscript=HTTPD)
    pytester.makeconftest(f"""
import pytest

@pytest.fixture
def image():
    return {str(image)!r}
""")
    before = instance_processes()
    yield pytester
    assert instance_processes() - before == set(), "the plugin left instances running"


def test_factory_gives_unique_names_a_free_port_and_readiness(project):
    project.makepyfile("""
import socket

def test_two_servers(instance_factory, image):
    first = instance_factory(image, port="PORT")
    second = instance_factory(image, port="PORT")
    assert first.name == "test_two_servers-0" and second.name == "test_two_servers-1"
    assert instance_factory.port(first) != instance_factory.port(second)
    for instance in (first, second):
        with socket.create_connection(("127.0.0.1", instance_factory.port(instance))) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            assert b"hello" in s.makefile("rb").read()
""")
    result = project.runpytest("-q")
    result.assert_outcomes(passed=1)


def test_a_failing_test_reports_its_instances_logs_and_they_are_stopped(project):
    project.makepyfile("""
def test_broken(instance_factory, image):
    instance_factory(image, port="PORT")
    assert False, "the test's own failure"
""")
    result = project.runpytest("-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*instance test_broken-0 stdout*", "serving on *"])


def test_an_instance_left_running_fails_the_test(project):
    project.makepyfile("""
from instancelib import Image, Instance

def test_leaky(instancelib_registry, image):
    Instance.start(Image(image), "forgotten", registry=instancelib_registry)
""")
    result = project.runpytest("-q")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*instances left running at the end of the test "
                                 "(now stopped): forgotten*"])


def test_images_are_built_once_and_cached_by_definition(project, tmp_path):
    counter = tmp_path / "builds"
    project.makepyfile(f"""
from instancelib import Image

DEFINITION = '''Bootstrap: localimage
From: {tmp_path / "web"}

%setup
    echo built >> {counter}

%post
    echo made > /made
'''

def test_built(instancelib_image, instance_factory):
    image = instancelib_image(DEFINITION)
    assert instancelib_image(DEFINITION).path == image.path
    assert instance_factory(image).exec(["cat", "/made"]).stdout == "made\\n"
""")
    project.runpytest("-q").assert_outcomes(passed=1)
    project.runpytest("-q").assert_outcomes(passed=1)  # a new session: from the cache
    assert counter.read_text() == "built\n"
    project.runpytest("-q", "--cache-clear").assert_outcomes(passed=1)
    assert counter.read_text() == "built\nbuilt\n"


def test_the_plugin_can_be_turned_off(project):
    project.makepyfile("""
def test_needs_it(instance_factory):
    pass
""")
    result = project.runpytest("-q", "-p", "no:instancelib")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'instance_factory' not found*"])
