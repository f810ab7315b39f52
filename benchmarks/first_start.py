#!/usr/bin/env python3
"""The first start in a new process, as a short script or a notebook's first cell pays it.

Each round is a new Python process that imports instancelib, opens an image, starts an
instance (the first), starts a second, and stops both; it reports the import time, the
first start and the second (a spare PID 1 ready). The first start comes right after the
imports (a script), or 0.5 s later (a notebook's next cell). Run with the fork-server and
the first spare PID 1 started as the start path is imported (the default) and, in the same
run, without (``INSTANCELIB_PRESTART=0``: the server starts with the first start). Prints
min / median / max over ``-n`` rounds.

Run as root or as an ordinary user:
    python3 benchmarks/first_start.py [-n 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from instancelib.build.busybox import make_busybox_rootfs

ROUND = """
import json, sys, time
began = time.perf_counter()
from instancelib import Image, Instance, InstanceRegistry
image = Image(sys.argv[1])
registry = InstanceRegistry(sys.argv[2])
time.sleep(float(sys.argv[3]))
imported = time.perf_counter()
first = Instance.start(image, "first", registry=registry)
started = time.perf_counter()
second = Instance.start(image, "second", registry=registry)
again = time.perf_counter()
first.stop()
second.stop()
print(json.dumps({"imports": imported - began, "first": started - imported,
                  "second": again - started}))
"""


def rounds(image: Path, workdir: Path, count: int, prestart: bool,
           gap: float) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"imports": [], "first": [], "second": []}
    env = {**os.environ, "INSTANCELIB_PRESTART": "1" if prestart else "0"}
    for number in range(count):
        result = subprocess.run([sys.executable, "-c", ROUND, str(image),
                                 str(workdir / f"registry-{prestart}-{gap}-{number}"),
                                 str(gap)],
                                env=env, capture_output=True, text=True, timeout=120,
                                check=True)
        for key, value in json.loads(result.stdout).items():
            found[key].append(value * 1000)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="processes per row (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="instancelib-bench-first-") as tmp:
        image = make_busybox_rootfs(Path(tmp) / "image")
        rounds(image, Path(tmp), 2, True, 0.0)  # warm the page cache and the byte code
        cases = [(True, 0.0), (True, 0.5), (False, 0.0), (False, 0.5)]
        table = {case: rounds(image, Path(tmp), args.n, *case) for case in cases}
    print(f"| ms ({args.n} new processes) | min | median | max |")
    print("|---|---:|---:|---:|")
    for prestart, gap in cases:
        label = ("prestart (default)" if prestart else "INSTANCELIB_PRESTART=0") + \
            (", start right after the imports" if not gap else f", start {gap} s later")
        keys = (("imports", "imports"), ("first", "first start"), ("second", "second start"))
        for key, what in keys if not gap else keys[1:2]:
            values = table[(prestart, gap)][key]
            print(f"| {label}: {what} | {min(values):.1f} | {statistics.median(values):.1f} "
                  f"| {max(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
