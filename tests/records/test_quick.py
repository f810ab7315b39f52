"""The CLI's quick listing reads what the registry would list, or declines (never changes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from instancelib.records import quick

PARTS = {"instances": ("instances", os.uname().nodename), "logs": ("logs", os.uname().nodename)}


def _full(registry) -> list[tuple[str, int, str, str]]:
    return [(r.name, r.pid, r.image, r.ip) for r in registry.records()]


def _quick(registry, pattern="*"):
    found = quick.running_records(str(registry.root), PARTS, os.geteuid(), pattern)
    return None if found is None else [(r["instance"], r["pid"], r["img"], r["ip"])
                                       for r in found]


def test_it_reads_what_the_registry_lists(start, image, registry):
    assert _quick(registry) == []                     # no registry directory yet
    start(image, "b")
    start(image, "a")
    assert _quick(registry) == _full(registry) and [n for n, *_ in _quick(registry)] == ["a", "b"]
    assert _quick(registry, "a") == _full(registry)[:1]
    assert _quick(registry, "a*") is None             # a glob: the full way
    assert _quick(registry, "nope") == []


def test_it_declines_when_the_registry_has_work_to_do(start, image, registry):
    instance = start(image, "doomed")
    os.kill(instance.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while instance.is_running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _quick(registry) is None                   # a record to prune: not here
    assert registry.records() == []                   # the full registry prunes it
    assert _quick(registry) == []
    stray = registry.instances_dir / ".tmp-writer"
    stray.write_text("{}")
    assert _quick(registry) is None                   # a temporary file: the full way
    stray.unlink()


def test_it_follows_no_link(tmp_path, registry, start, image):
    start(image, "real")
    elsewhere = tmp_path / "elsewhere"
    os.rename(registry.root, elsewhere)
    registry.root.symlink_to(elsewhere)
    try:
        assert _quick(registry) is None
    finally:
        registry.root.unlink()
        os.rename(elsewhere, registry.root)


def test_the_command_prints_the_same_either_way(start, image, registry):
    start(image, "web")
    env = dict(os.environ, INSTANCELIB_HOME=str(registry.root))
    quick_out = subprocess.run([sys.executable, "-m", "instancelib", "instance", "list",
                                "--json"], env=env, capture_output=True, text=True, timeout=60,
                               check=True).stdout
    full_out = subprocess.run([sys.executable, "-c", "import sys; from instancelib.cli.main "
                               "import main; sys.exit(main(sys.argv[1:]))", "instance", "list",
                               "--json"], env=env, capture_output=True, text=True, timeout=60,
                              check=True).stdout
    assert quick_out == full_out
    assert json.loads(quick_out)["instances"][0]["instance"] == "web"
