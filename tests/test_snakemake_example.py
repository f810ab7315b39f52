"""examples/snakemake: a workflow whose rules share a Redis instance, run with Snakemake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from instancelib import InstanceRegistry
from tests.helpers import instance_processes

pytest.importorskip("snakemake", reason="the test extra brings snakemake")
if os.geteuid() != 0:
    pytest.skip("the example's image is built with debootstrap, which needs root "
                "(the suite's root pass runs it)", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "snakemake"


def free_port() -> int:
    import socket  # noqa: PLC0415
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def snakemake(tmp_path: Path, *config: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INSTANCELIB_HOME": str(tmp_path / "home"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(EXAMPLE / "Snakefile"), "--cores", "2",
         "--directory", str(tmp_path / "run"), "--config", f"port={free_port()}", *config],
        env=env, capture_output=True, text=True, timeout=900, check=False)


def test_the_workflow_uses_one_instance_and_stops_it(tmp_path):
    before = instance_processes()
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "summary.txt").read_text().split() == \
        ["the", "4", "fox", "3", "dog", "3"]
    assert InstanceRegistry(tmp_path / "home").list() == []
    assert instance_processes() - before == set()


def test_a_failing_rule_still_stops_the_instance(tmp_path):
    before = instance_processes()
    result = snakemake(tmp_path, "fail=1")
    assert result.returncode != 0
    assert "summary" in result.stderr and not (tmp_path / "run" / "summary.txt").exists()
    assert (tmp_path / "run" / "counts" / "gamma.txt").read_text() == "6\n"  # it ran and fed
    assert InstanceRegistry(tmp_path / "home").list() == []
    assert instance_processes() - before == set()


def test_the_example_and_the_notebooks_share_one_cached_image():
    notebooks = EXAMPLE.parent.parent / "notebooks" / "services.def"
    assert (EXAMPLE / "services.def").read_bytes() == notebooks.read_bytes()
