#!/usr/bin/env python3
"""Image benchmark: start and stop by image kind, and building the demo image.

Measures, as medians over ``-n`` rounds (after warm-up rounds), one idle image
(the same busybox root filesystem) in each form:

- sandbox: the directory;
- sif: a SIF holding it (root: a shared loop device; a user: squashfuse, or
  the copy unpacked once into the cache when FUSE is not usable);
- oci-archive: the same files as an OCI archive (unpacked once into the cache);

start: ``Instance.start()`` until it returns; stop: ``instance.stop()`` until
everything (loop device included) is released.  Then the demo's definition file
(``demo/demo.py``) built into a SIF and into a sandbox, ``--build-rounds`` times.

Targets (issue 4): SIF start at most 5 ms slower than sandbox start; the demo
image built in at most 2 s.  Run:  python3 benchmarks/images.py [-n 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import shutil
import socket
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from instancelib import Definition, Image, Instance, InstanceRegistry, build_image
from instancelib.build import remove_build_tree
from instancelib.build.busybox import make_busybox_rootfs
from instancelib.image import sif
from instancelib.linux.userns import has_host_root

ROOT = Path(__file__).resolve().parents[1]


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def demo_definition() -> str:
    spec = importlib.util.spec_from_file_location("demo", ROOT / "demo" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.DEFINITION)


def oci_archive(rootfs: Path, target: Path) -> None:
    """A one-layer OCI archive of ``rootfs`` (written here; podman is not needed)."""
    import hashlib  # noqa: PLC0415

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    layer_bytes = layer.getvalue()
    config = json.dumps({"architecture": sif.host_arch(), "os": "linux",
                         "config": {"Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(layer_bytes).hexdigest()]}}).encode()

    def descriptor(media: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer_bytes)],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        descriptor("application/vnd.oci.image.manifest.v1+json", manifest)]}).encode()
    with tarfile.open(target, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for data in (config, manifest, layer_bytes):
            add(f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data)


def measure(image: Image, registry: InstanceRegistry, rounds: int,
            warmup: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"start": [], "stop": []}
    for k in range(warmup + rounds):
        began = time.perf_counter()
        instance = Instance.start(image, f"img{k}", registry=registry)
        started = time.perf_counter()
        instance.stop()
        stopped = time.perf_counter()
        if k >= warmup:
            results["start"].append(started - began)
            results["stop"].append(stopped - started)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--build-rounds", type=int, default=5)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="instancelib-bench-images-"))
    os.environ["INSTANCELIB_CACHE"] = str(workdir / "cache")
    try:
        registry = InstanceRegistry(workdir / "registry")
        rootfs = make_busybox_rootfs(workdir / "rootfs")
        sif_path = build_image(rootfs, workdir / "idle.sif").path
        oci_archive(rootfs, workdir / "idle-oci.tar")
        images = {"sandbox": Image(rootfs), "sif": Image(sif_path),
                  "oci-archive": Image(workdir / "idle-oci.tar")}
        Instance.start(images["sandbox"], "warm", registry=registry).stop()
        results = {kind: measure(image, registry, args.rounds, args.warmup)
                   for kind, image in images.items()}

        definition = Definition.parse(demo_definition())
        builds: dict[str, list[float]] = {"SIF": [], "sandbox": []}
        for k in range(args.build_rounds):
            for kind, times in builds.items():
                target = workdir / f"demo-{kind}-{k}"
                began = time.perf_counter()
                build_image(definition, target, sandbox=kind == "sandbox")
                times.append(time.perf_counter() - began)
                remove_build_tree(target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    who = "root" if has_host_root() else f"uid {os.getuid()}"
    print(f"# images on {socket.gethostname()}, kernel {os.uname().release}, "
          f"{os.cpu_count()} CPUs, as {who}, n={args.rounds} (medians)")
    print()
    print("| image | start ms | stop ms | vs sandbox start ms |")
    print("|---|---:|---:|---:|")
    base = ms(results["sandbox"]["start"])
    for kind, result in results.items():
        start = ms(result["start"])
        print(f"| {kind} | {start:.2f} | {ms(result['stop']):.2f} | {start - base:+.2f} |")
    print()
    print(f"| build the demo image (n={args.build_rounds}) | median s | max s |")
    print("|---|---:|---:|")
    for kind, times in builds.items():
        print(f"| {kind} | {statistics.median(times):.2f} | {max(times):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
