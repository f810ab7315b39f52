#!/usr/bin/env python3
"""What Singularity's clients pay per call: the command as whole processes, and foreground exec.

Prints min / median / max over ``-n`` runs (after warm-ups) of:

- ``singularity --version`` through the launcher ``instancelib alias`` writes
  (Python without ``site``), through a plain link to the console script, and
  ``instancelib --version`` (the console script);
- ``singularity instance list --json`` with ``--count`` (100) instances up;
- a foreground command on an image: ``singularity exec IMAGE true`` (whole
  process), ``Image.exec(["true"])`` in a warm process, and, as its parts,
  ``Instance.start`` + ``exec(["true"])`` + ``stop`` of an instance; with peers
  in the same run: util-linux ``unshare`` + ``chroot`` (new mount, PID, UTS and
  IPC namespaces; as root) and ``bwrap`` (when installed).

Run as root (or as an ordinary user: the unshare peer is then left out):
    python3 benchmarks/cli.py [-n 20] [--count 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from instancelib import Image, Instance, InstanceRegistry
from instancelib.build.busybox import make_busybox_rootfs
from instancelib.cli.alias import write_launcher
from instancelib.stopping import stop_instances


def timed(action: Callable[[], object], rounds: int, warmup: int) -> list[float]:
    values = []
    for k in range(warmup + rounds):
        began = time.perf_counter()
        action()
        if k >= warmup:
            values.append((time.perf_counter() - began) * 1000)
    return values


def process(argv: Sequence[str], env: dict[str, str] | None = None) -> Callable[[], None]:
    def run() -> None:
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       env=env, timeout=120)
    return run


def row(name: str, values: list[float] | str) -> str:
    if isinstance(values, str):
        return f"| {name} | {values} | | |"
    return (f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} | "
            f"{max(values):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--count", type=int, default=100, help="instances up for list")
    options = parser.parse_args()
    n, w = options.rounds, options.warmup
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="instancelib-bench-cli-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, SINGULARITY_CONFIGDIR=str(work / "config"))
        bindir = work / "bin"
        bindir.mkdir()
        launcher = write_launcher("singularity", bindir)
        script = Path(sys.executable).with_name("instancelib")
        rows.append(row("`singularity --version` (launcher)",
                        timed(process([str(launcher), "--version"]), n, w)))
        if script.exists():
            link = work / "link" / "singularity"
            link.parent.mkdir()
            link.symlink_to(script)
            rows.append(row("`singularity --version` (link to the console script)",
                            timed(process([str(link), "--version"]), n, w)))
            rows.append(row("`instancelib --version` (console script)",
                            timed(process([str(script), "--version"]), n, w)))
        rows.append(row("`python3 -S -c pass` (the interpreter alone)",
                        timed(process([sys.executable, "-S", "-c", "pass"]), n, w)))

        rootfs = make_busybox_rootfs(work / "image")
        image = Image(rootfs)
        registry = InstanceRegistry(layout="singularity", root=work / "config")
        instances = []
        try:
            for k in range(options.count):
                instances.append(Instance.start(image, f"i{k}", registry=registry))
            rows.append(row(f"`singularity instance list --json` ({options.count} up)",
                            timed(process([str(launcher), "instance", "list", "--json"], env),
                                  n, w)))
        finally:
            stop_instances(instances, force=True)

        rows.append(row("`singularity exec IMAGE true` (whole process)",
                        timed(process([str(launcher), "exec", str(rootfs), "true"], env), n, w)))
        rows.append(row("`Image.exec([\"true\"])` (warm process)",
                        timed(lambda: image.exec(["true"]), n, w)))

        def parts() -> None:
            instance = Instance.start(image, "parts", registry=registry)
            instance.exec(["true"])
            instance.stop()

        rows.append(row("`Instance.start` + `exec` + `stop` (warm process)",
                        timed(parts, n, w)))
        if os.geteuid() == 0 and shutil.which("unshare"):
            rows.append(row("peer: `unshare -m -u -i -p -f chroot ROOT true`",
                            timed(process(["unshare", "-m", "-u", "-i", "-p", "-f", "chroot",
                                           str(rootfs), "/bin/true"]), n, w)))
        if shutil.which("bwrap"):
            rows.append(row("peer: `bwrap --bind ROOT / --unshare-all true`",
                            timed(process(["bwrap", "--bind", str(rootfs), "/", "--proc",
                                           "/proc", "--dev", "/dev", "--unshare-all",
                                           "/bin/true"]), n, w)))
        else:
            rows.append(row("peer: bwrap", "not installed"))
    print(f"| ms ({n} runs after {w} warm-ups) | min | median | max |")
    print("|---|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
