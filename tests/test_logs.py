"""The service's logs (``logs.py``): captured, appended, followed."""

from __future__ import annotations

import threading
import time

from tests.helpers import wait_for


def test_logs_capture_stdout_and_stderr(make_image, start, registry):
    image = make_image(startscript="#!/bin/sh\necho out1\necho err1 >&2\necho out2\n"
                                   "exec sleep 1000\n")
    instance = start(image, "logged")
    wait_for(lambda: "out2" in instance.stdout_path.read_text())
    assert instance.stdout_path == registry.logs_dir / "logged.out"
    assert list(instance.logs()) == ["out1", "out2"]
    assert list(instance.logs(stderr=True)) == ["err1"]
    assert list(instance.logs(tail=1)) == ["out2"]
    assert oct(instance.stdout_path.stat().st_mode & 0o777) == "0o600"


def test_logs_are_appended_across_restarts(make_image, start):
    image = make_image(startscript="#!/bin/sh\necho started $$ $(cat /proc/uptime)\n"
                                   "echo oops >&2\nexec sleep 1000\n")
    first = start(image, "again")
    wait_for(lambda: "started" in first.stdout_path.read_text())
    first.stop()
    second = start(image, "again")
    wait_for(lambda: second.stdout_path.read_text().count("started") == 2)
    wait_for(lambda: second.stderr_path.read_text().count("oops") == 2)
    # The files keep both (as Singularity's); the instance's logs() are its own lines only.
    whole = second.stdout_path.read_text().splitlines()
    assert list(second.logs()) == whole[1:] and len(whole) == 2
    assert list(second.logs(all=True)) == whole
    assert list(second.logs(stderr=True)) == ["oops"]
    assert list(second.logs(stderr=True, all=True)) == ["oops", "oops"]
    assert list(second.logs(tail=5)) == whole[1:]


def test_a_truncated_log_is_read_from_its_start(make_image, start):
    image = make_image(startscript="#!/bin/sh\necho one\nsleep 0.3\necho two\n"
                                   "exec sleep 1000\n")
    earlier = start(image, "cut")
    wait_for(lambda: "two" in earlier.stdout_path.read_text())
    earlier.stop()
    instance = start(image, "cut")
    wait_for(lambda: instance.stdout_path.read_text().count("one") == 2)
    instance.stdout_path.write_text("")  # log rotation: truncated under the instance
    wait_for(lambda: "two" in instance.stdout_path.read_text(), timeout=5)
    assert list(instance.logs()) == ["two"]


def test_logs_follow_ends_when_the_instance_ends(make_image, start):
    script = "#!/bin/sh\nwhile true; do echo tick; sleep 0.05; done\n"
    instance = start(make_image(startscript=script))
    seen: list[str] = []

    def reader() -> None:
        seen.extend(instance.logs(follow=True))

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.3)
    instance.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert seen.count("tick") >= 2
