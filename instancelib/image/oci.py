"""OCI images (layout directories, ``oci-archive`` and ``docker-archive`` tars) as sandboxes.

An OCI image is a manifest naming a config and a list of layers (tars,
usually gzip-compressed).  ``unpacked(image)`` applies the layers in order
into a directory of the image cache (keyed by the manifest's digest, so it is
done once): whiteouts (``.wh.NAME`` removes NAME from lower layers,
``.wh..wh..opq`` empties its directory of lower layers' content), hard
links, permissions and (as root) owners are kept, all through descriptors of
the root (``layers``), so no entry of a layer can make us write outside it.
Each layer's blob is checked against its digest (a docker archive's against
the config's ``diff_ids``) before any of it is unpacked, and an image may not
unpack to more than the cache's bound (``INSTANCELIB_CACHE_MAX``).

The config is turned into Singularity's layout as Apptainer does: ``Env``
into ``/.singularity.d/env/10-docker2singularity.sh``, ``Entrypoint``,
``Cmd`` (and ``WorkingDir``) into ``/.singularity.d/runscript``, ``Labels``
into ``/.singularity.d/labels.json``; so ``Instance.start(..., run=True)``
runs the entrypoint.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from instancelib.errors import ImageError, Unsupported
from instancelib.image import cache, sif
from instancelib.image import layers as layers_module

if TYPE_CHECKING:
    from instancelib.image.image import Image

__all__ = ["ImageConfig", "Layer", "describe", "singularity_layout", "unpack_into", "unpacked"]

_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_JSON = 16 << 20


class ImageConfig(dict[str, Any]):
    """An image config's ``config`` part (Env, Entrypoint, Cmd, WorkingDir, Labels)."""


# -- reading images -------------------------------------------------------------------------


class _Source:
    """Blobs and files of an OCI layout directory or of a tar archive."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.path = image.path
        self._tar: tarfile.TarFile | None = None
        if image.kind != "oci-layout":
            try:
                self._tar = tarfile.open(self.path)  # noqa: SIM115 (closed by close())
            except (OSError, tarfile.TarError) as err:
                raise ImageError(f"cannot read the archive {self.path}: {err}") from err
            self._members = {m.name.lstrip("./"): m for m in self._tar.getmembers()}

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        name = name.lstrip("./")
        if self._tar is None:
            full = os.path.join(self.path, name)
            if ".." in name.split("/") or not os.path.isfile(full):
                raise ImageError(f"{self.path} lacks {name}")
            with open(full, "rb") as f:
                yield f
            return
        member = self._members.get(name)
        stream = self._tar.extractfile(member) if member is not None else None
        if stream is None:
            raise ImageError(f"{self.path} lacks {name}")
        with stream:
            yield stream

    def json(self, name: str) -> Any:
        with self.open(name) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise ImageError(f"{self.path}: {name} is implausibly large")
        try:
            return json.loads(data)
        except ValueError as err:
            raise ImageError(f"{self.path}: {name} is not valid JSON ({err})") from err

    def blob_name(self, digest: str) -> str:
        algorithm, _, value = str(digest).partition(":")
        if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef"
                                                               for c in value):
            raise ImageError(f"{self.path}: unsupported or malformed digest {digest!r}")
        return f"blobs/sha256/{value}"

    def verified_json(self, digest: str) -> Any:
        with self.open(self.blob_name(digest)) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise ImageError(f"{self.path}: blob {digest} is implausibly large")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ImageError(f"{self.path}: blob {digest} does not match its digest")
        return json.loads(data)


def _platform_matches(entry: dict[str, Any]) -> bool:
    platform = entry.get("platform")
    if not isinstance(platform, dict):
        return True
    return bool(platform.get("os", "linux") == "linux"
                and platform.get("architecture", sif.host_arch()) == sif.host_arch())


def _oci_manifest(source: _Source) -> tuple[str, dict[str, Any]]:
    """The digest and content of the image manifest for this host's platform."""
    index = source.json("index.json")
    for _depth in range(4):
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or not manifests:
            raise ImageError(f"{source.path}: its index lists no image")
        candidates = [m for m in manifests if isinstance(m, dict) and _platform_matches(m)]
        if not candidates:
            raise ImageError(f"{source.path} has no image for linux/{sif.host_arch()}")
        chosen = candidates[0]
        digest = str(chosen.get("digest", ""))
        content = source.verified_json(digest)
        if chosen.get("mediaType") in _INDEX_TYPES or content.get("mediaType") in _INDEX_TYPES:
            index = content
            continue
        return digest, content
    raise ImageError(f"{source.path}: image indexes nest too deep")


@attrs.frozen
class Layer:
    """One layer of an image: where its blob is, and what it must hash to.

    ``digest`` (OCI: the manifest's, over the blob as stored) and
    ``diff_id`` (docker archives: the config's, over the uncompressed tar)
    are checked before anything of the layer is unpacked; ``size`` is the
    blob's size the manifest declares.
    """

    name: str
    digest: str | None = None
    diff_id: str | None = None
    size: int | None = None


def describe(image: Image) -> tuple[str, dict[str, Any], list[Layer], _Source]:
    """(cache key, image config, layers, source) of an OCI or docker image."""
    source = _Source(image)
    try:
        if image.kind == "docker-archive":
            key, config, layers = _docker_archive(source)
        else:
            digest, manifest_content = _oci_manifest(source)
            key = digest.partition(":")[2]
            config = source.verified_json(str(manifest_content["config"]["digest"]))
            layers = []
            for layer in manifest_content.get("layers", []):
                size = layer.get("size")
                layers.append(Layer(source.blob_name(str(layer["digest"])),
                                    digest=str(layer["digest"]),
                                    size=size if isinstance(size, int) else None))
        if not isinstance(config, dict):
            raise ImageError(f"{image.path}: the image config is not a JSON object")
        arch = config.get("architecture")
        if arch and arch != sif.host_arch():
            raise ImageError(f"{image.path} is built for {arch}; this host is {sif.host_arch()}")
        return f"oci-{key[:40]}", config, layers, source
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        source.close()
        raise ImageError(f"{image.path}: malformed image metadata ({err})") from err
    except BaseException:
        source.close()
        raise


def _docker_archive(source: _Source) -> tuple[str, Any, list[Layer]]:
    """A ``docker save`` archive: its config (checked against its name) and layers.

    The config is named by its digest (``HEX.json``, or ``blobs/sha256/HEX`` in
    newer archives); the layers are checked against the config's
    ``rootfs.diff_ids``, the digests of their uncompressed tars.
    """
    manifest = source.json("manifest.json")
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise ImageError(f"{source.path}: manifest.json lists no image")
    entry = manifest[0]
    config_name = str(entry.get("Config", ""))
    with source.open(config_name) as f:
        raw_config = f.read(_MAX_JSON + 1)
    if len(raw_config) > _MAX_JSON:
        raise ImageError(f"{source.path}: {config_name} is implausibly large")
    key = hashlib.sha256(raw_config).hexdigest()
    named = _DIGEST_NAME.search(config_name)
    if named and named.group(1) != key:
        raise ImageError(f"{source.path}: its config {config_name} does not match its digest "
                         "(the archive is corrupt or was tampered with)")
    config = json.loads(raw_config)
    names = [str(layer) for layer in entry.get("Layers", [])]
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(names):
        raise ImageError(f"{source.path}: cannot verify its layers: the config lists "
                         f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids "
                         f"for {len(names)} layers")
    return key, config, [Layer(name, diff_id=str(diff_id))
                         for name, diff_id in zip(names, diff_ids, strict=True)]


def unpack_into(image: Image, root: Path) -> None:
    """Unpack an OCI or docker image into the empty directory ``root``, with its layout.

    Every layer is checked against its digest before it is applied, and the
    whole image may not unpack to more than ``INSTANCELIB_CACHE_MAX``.

    Raises:
        ImageError: a malformed, tampered, hostile or too large image.
        Unsupported: a layer format this host cannot decompress (zstd without ``zstd``).
    """
    _key, config, layers, source = describe(image)
    try:
        _unpack(image, root, config, layers, source)
    finally:
        source.close()


def _unpack(image: Image, root: Path, config: dict[str, Any], layers: list[Layer],
            source: _Source) -> None:
    budget = layers_module.Budget(cache.max_bytes(), f"image {image.path}")
    try:
        with layers_module.RootTree(root) as tree:
            for layer in layers:
                with _layer_tar(source, layer, image.path, budget, root.parent) as tar:
                    members = budget.members(tar, layer.name)
                    layers_module.apply_layer(tree, tar, members, layer.name)
            singularity_layout(tree, config)
    except OSError as err:
        raise ImageError(f"cannot unpack {image.path}: {err.strerror or err}",
                         path=image.path, errno=err.errno) from err


def unpacked(image: Image) -> tuple[Path, Path]:
    """The image unpacked into a sandbox in the cache: ``(directory, lock)``."""
    key, config, layers, source = describe(image)
    try:
        return cache.entry(key, lambda target: _unpack(image, target, config, layers, source),
                           what=f"image {image.path}")
    finally:
        source.close()


_DIGEST_NAME = re.compile(r"(?:^|/)(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?\Z")
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"),
          (_ZSTD_MAGIC, "zstd"))
_OPENERS: dict[str, Callable[[IO[bytes]], IO[bytes]]] = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),  # type: ignore[return-value,dict-item]
    "bzip2": lambda f: bz2.BZ2File(f, mode="rb"),
    "xz": lambda f: lzma.LZMAFile(f, mode="rb"),  # noqa: SIM115 (closed by the caller)
}


def _digest_of(stream: IO[bytes], limit: int, what: str) -> tuple[str, int]:
    """``sha256:HEX`` and size of what ``stream`` yields; ImageError past ``limit`` bytes."""
    hasher, size = hashlib.sha256(), 0
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return f"sha256:{hasher.hexdigest()}", size
        size += len(chunk)
        if size > limit:
            raise ImageError(f"{what} unpacks to more than the image cache may hold "
                             "(INSTANCELIB_CACHE_MAX)")
        hasher.update(chunk)


@contextlib.contextmanager
def _layer_tar(source: _Source, layer: Layer, image_path: str, budget: layers_module.Budget,
               scratch: Path) -> Iterator[tarfile.TarFile]:
    """The layer's tar, once its blob (and uncompressed content) matched their digests."""
    what = f"{image_path}: layer {layer.name}"
    try:
        with source.open(layer.name) as blob:
            head = blob.read(8)
            blob.seek(0)
            compression = next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)
            if layer.digest is not None:
                digest, size = _digest_of(blob, 1 << 62, what)
                if digest != layer.digest or (layer.size is not None and size != layer.size):
                    raise ImageError(f"{what} does not match its digest {layer.digest} "
                                     "(the image is corrupt or was tampered with)")
                blob.seek(0)
            if compression == "zstd":
                with _zstd_decompressed(blob, what, budget.limit, scratch) as plain:
                    if layer.diff_id is not None:
                        _check_diff_id(plain, layer, what, budget.limit)
                    with tarfile.open(fileobj=plain, mode="r:") as tar:
                        yield tar
                return
            if layer.diff_id is not None:
                if compression is None:
                    _check_diff_id(blob, layer, what, budget.limit)
                else:
                    with _OPENERS[compression](blob) as plain_stream:
                        _check_diff_id(plain_stream, layer, what, budget.limit)
                blob.seek(0)
            with tarfile.open(fileobj=blob, mode="r:*") as tar:
                yield tar
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as err:
        raise ImageError(f"{what} is not a readable (compressed) tar: {err}") from err


def _check_diff_id(stream: IO[bytes], layer: Layer, what: str, limit: int) -> None:
    digest, _size = _digest_of(stream, limit, what)
    stream.seek(0)
    if digest != layer.diff_id:
        raise ImageError(f"{what} does not match its diff_id {layer.diff_id} "
                         "(the image is corrupt or was tampered with)")


@contextlib.contextmanager
def _zstd_decompressed(blob: IO[bytes], what: str, limit: int,
                       scratch: Path) -> Iterator[IO[bytes]]:
    """The zstd blob decompressed into a temporary file, at most ``limit`` bytes of it."""
    zstd = shutil.which("zstd")
    if zstd is None:
        raise Unsupported(f"{what} is zstd-compressed; install zstd")
    with tempfile.TemporaryFile(dir=scratch) as plain:
        process = subprocess.Popen([zstd, "-dc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        assert process.stdin is not None and process.stdout is not None
        try:
            feeder = threading.Thread(target=_feed, args=(blob, process.stdin), daemon=True)
            feeder.start()
            written = 0
            for chunk in iter(lambda: process.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
                written += len(chunk)
                if written > limit:
                    raise ImageError(f"{what} unpacks to more than the image cache may hold "
                                     "(INSTANCELIB_CACHE_MAX)")
                plain.write(chunk)
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.kill()
            status = process.wait()
            feeder.join()
        if status != 0:
            raise ImageError(f"cannot decompress {what}")
        plain.seek(0)
        yield plain


def _feed(blob: IO[bytes], pipe: IO[bytes]) -> None:
    with contextlib.suppress(OSError), pipe:
        shutil.copyfileobj(blob, pipe, 1 << 20)


# -- Singularity's layout ----------------------------------------------------------------------


def _shell_escape(text: str) -> str:
    """Escape for the inside of double quotes: backslash, double quote, backtick, dollar."""
    for char in ("\\", '"', "`", "$"):
        text = text.replace(char, "\\" + char)
    return text


def _quoted_args(args: list[str]) -> str:
    return " ".join(f'"{_shell_escape(arg)}"' for arg in args)


def env_script(env: list[str]) -> str:
    """``10-docker2singularity.sh``: PATH as given, other variables as defaults."""
    lines = ["#!/bin/sh"]
    for item in env:
        name, sep, value = item.partition("=")
        if not sep:
            continue
        if name == "PATH":
            lines.append(f'export PATH="{_shell_escape(value)}"')
        else:
            lines.append(f'export {name}="${{{name}:-"{_shell_escape(value)}"}}"')
    return "\n".join(lines) + "\n"


def runscript(entrypoint: list[str], cmd: list[str], workdir: str | None) -> str:
    """The runscript: ENTRYPOINT with CMD as default arguments, as Apptainer writes it."""
    lines = ["#!/bin/sh"]
    if workdir:
        lines.append(f'cd "{_shell_escape(workdir)}" || exit 1')
    lines.append(_assign("OCI_ENTRYPOINT", _quoted_args(entrypoint)))
    lines.append(_assign("OCI_CMD", _quoted_args(cmd)))
    # The arguments given to ``run`` replace CMD and are passed on exactly as
    # given ("$@" survives the eval); the image's words are evaluated as the
    # shell would (they may hold quoting).  Nothing but sh is needed.
    lines.append('''if [ $# -gt 0 ]; then
    eval "set -- ${OCI_ENTRYPOINT} \\"\\$@\\""
else
    eval "set -- ${OCI_ENTRYPOINT} ${OCI_CMD}"
fi
exec "$@"''')
    return "\n".join(lines) + "\n"


def _assign(name: str, value: str) -> str:
    """``NAME='value'`` with single quotes escaped for sh."""
    return f"{name}='" + value.replace("'", "'\\''") + "'"


def singularity_layout(tree: layers_module.RootTree, config: dict[str, Any]) -> None:
    """Write /.singularity.d for an OCI image config (env, runscript, labels).

    Through ``tree``: a link the image holds at any of these names is
    replaced, never written through, and the mount points are made where the
    instance will see them (links followed inside the image).
    """
    settings = config.get("config") or {}
    if not isinstance(settings, dict):
        settings = {}
    for directory in (".singularity.d", ".singularity.d/env", ".singularity.d/libs",
                      ".singularity.d/actions"):
        tree.make_directory(directory)
    for mount_point in ("proc", "sys", "dev", "tmp", "var/tmp", "home", "root", "etc"):
        tree.ensure_mount_point(mount_point)
    env = [str(item) for item in settings.get("Env") or [] if isinstance(item, str)]
    tree.write_file(".singularity.d/env/10-docker2singularity.sh", env_script(env).encode(),
                    0o755)
    entrypoint = [str(a) for a in settings.get("Entrypoint") or []]
    cmd = [str(a) for a in settings.get("Cmd") or []]
    workdir = settings.get("WorkingDir")
    tree.write_file(".singularity.d/runscript",
                    runscript(entrypoint, cmd, str(workdir) if workdir else None).encode(), 0o755)
    labels = settings.get("Labels") or {}
    tree.write_file(".singularity.d/labels.json",
                    (json.dumps(labels if isinstance(labels, dict) else {}, indent=4,
                                sort_keys=True) + "\n").encode(), 0o644)
