#!/usr/bin/env python3
"""instancelib demo: a tiny web-server image, run as two background instances.

1. builds a SIF image from the definition file embedded below (``Bootstrap:
   busybox``: the host's static busybox; ``%post`` writes the site; the
   startscript serves it with ``busybox httpd``), and inspects it;
2. starts two instances of it (``web1``, ``web2``), each waiting until its port answers;
3. fetches a page from each;
4. shows ``instancelib instance list`` (the CLI, in Singularity's format);
5. runs ``ps`` inside ``web1`` (its PID 1 is instancelib's init) and reads its log;
6. stops both and lists again.

Everything lives in a temporary directory (image and registry) removed at the end.
Run as root:  bash scripts/demo
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from instancelib import (
    BuildProgress,
    Definition,
    Instance,
    InstanceRegistry,
    Limits,
    build_image,
)

DEFINITION = """\
Bootstrap: busybox

%help
    The instancelib demo: a tiny web server.  Start it with the port as argument.

%labels
    org.opencontainers.image.title instancelib-demo
    Version {{ VERSION }}

%arguments
    VERSION=1.0

%environment
    export SITE_NAME="the demo site"

%post
    mkdir -p /srv/www
    echo "<html><body><h1>Hello from an instancelib instance</h1></body></html>" \\
        > /srv/www/index.html

%startscript
    echo "serving ${SITE_NAME} on port $1"
    exec httpd -f -v -p "127.0.0.1:$1" -h /srv/www

%test
    test -s /srv/www/index.html
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(*args: str, home: Path) -> None:
    env = dict(os.environ, INSTANCELIB_HOME=str(home))
    print(f"$ instancelib {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "instancelib", *args], env=env, check=True)


def main() -> int:
    if os.geteuid() != 0:
        print("the demo runs as root (instances need namespaces and mounts)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="instancelib-demo-"))
    registry = InstanceRegistry(workdir / "registry")
    instances: list[Instance] = []
    try:
        step("build a SIF image from the embedded definition file (Bootstrap: busybox)")
        began = time.perf_counter()

        def progress(event: BuildProgress) -> None:
            if event.output is None and event.step != "done":
                print(f"  {event.step}")

        image = build_image(Definition.parse(DEFINITION), workdir / "web.sif",
                            progress=progress)
        print(f"{image} built in {(time.perf_counter() - began) * 1000:.0f} ms")
        cli("inspect", "--labels", image.path, home=registry.root)

        step("start two instances, each ready when its port answers; web2 with limits")
        for name, limits in (("web1", None),
                             ("web2", Limits(memory="64M", cpus=0.5, pids_limit=32))):
            port = free_port()
            began = time.perf_counter()
            instance = Instance.start(image, name, args=[str(port)], registry=registry,
                                      ready=("tcp", port), limits=limits)
            instances.append(instance)
            cgroup = instance.cgroup
            print(f"{name}: pid {instance.pid}, port {port}, ready in "
                  f"{(time.perf_counter() - began) * 1000:.1f} ms; cgroup "
                  f"{cgroup.name + ' (' + cgroup.version + ')' if cgroup else 'none'}")
            instance.port = port  # type: ignore[attr-defined]

        step("fetch a page from each")
        for instance in instances:
            url = f"http://127.0.0.1:{instance.port}/"  # type: ignore[attr-defined]
            with urllib.request.urlopen(url, timeout=5) as response:
                page = response.read().decode().strip()
                print(f"{instance.name}: HTTP {response.status}: {page}")

        step("list the instances with the CLI")
        cli("instance", "list", home=registry.root)

        step("exec `ps` inside web1: its PID 1 is instancelib's init")
        began = time.perf_counter()
        result = instances[0].exec(["ps"])
        print(result.stdout.rstrip())
        print(f"(exec took {(time.perf_counter() - began) * 1000:.1f} ms)")
        cli("exec", "instance://web1", "sh", "-c", "echo hostname: $(hostname), $SITE_NAME",
            home=registry.root)

        step("resource use: stats() from the API, then the CLI's table")
        for instance in instances:
            stats = instance.stats()
            limit = f"limit {stats.memory_limit >> 20} MiB" if stats.memory_limit else "no limit"
            print(f"{instance.name}: {stats.memory_usage / 1024:.0f} KiB of memory ({limit}), "
                  f"{stats.pids} processes, CPU {stats.cpu_percent:.1f}% [{stats.source}]")
        cli("instance", "stats", "--no-stream", "web2", home=registry.root)
        step("pause web1 (its cgroup's freezer), then resume it")
        instances[0].pause()
        print(f"web1 paused: {instances[0].paused}")
        instances[0].resume()
        print(f"web1 paused: {instances[0].paused}")

        step("web1's log")
        for line in instances[0].logs():
            print(f"  {line}")

        step("stop both")
        for instance in instances:
            began = time.perf_counter()
            instance.stop()
            print(f"{instance.name} stopped in {(time.perf_counter() - began) * 1000:.1f} ms")
        cli("instance", "list", home=registry.root)
    finally:
        for instance in instances:
            instance.stop(force=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
