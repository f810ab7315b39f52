"""OCI images (layout directories, ``oci-archive`` and ``docker-archive`` tars) as sandboxes.

An OCI image is a manifest naming a config and a list of layers (tars,
usually gzip-compressed).  ``unpacked(image)`` applies the layers in order
into a directory of the image cache (keyed by the manifest's digest, so it is
done once): whiteouts (``.wh.NAME`` removes NAME from lower layers,
``.wh..wh..opq`` empties its directory of lower layers' content), hard
links, permissions and (as root) owners are kept.  Paths are resolved inside
the image's root with chroot semantics, so a layer's symlink can never make
a later layer write outside it.

The config is turned into Singularity's layout as Apptainer does: ``Env``
into ``/.singularity.d/env/10-docker2singularity.sh``, ``Entrypoint``,
``Cmd`` (and ``WorkingDir``) into ``/.singularity.d/runscript``, ``Labels``
into ``/.singularity.d/labels.json``; so ``Instance.start(..., run=True)``
runs the entrypoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from instancelib.errors import ImageError, Unsupported
from instancelib.image import cache, sif
from instancelib.linux import pathwalk
from instancelib.linux.userns import has_host_root

if TYPE_CHECKING:
    from instancelib.image.image import Image

__all__ = ["ImageConfig", "apply_layer", "singularity_layout", "unpacked"]

_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
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


def describe(image: Image) -> tuple[str, dict[str, Any], list[str], _Source]:
    """(cache key, image config, layer blob names, source) of an OCI or docker image."""
    source = _Source(image)
    try:
        if image.kind == "docker-archive":
            manifest = source.json("manifest.json")
            if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0],
                                                                                 dict):
                raise ImageError(f"{image.path}: manifest.json lists no image")
            entry = manifest[0]
            with source.open(str(entry.get("Config", ""))) as f:
                raw_config = f.read(_MAX_JSON)
            key = hashlib.sha256(raw_config).hexdigest()
            config = json.loads(raw_config)
            layers = [str(layer) for layer in entry.get("Layers", [])]
        else:
            digest, manifest_content = _oci_manifest(source)
            key = digest.partition(":")[2]
            config = source.verified_json(str(manifest_content["config"]["digest"]))
            layers = []
            for layer in manifest_content.get("layers", []):
                layers.append(source.blob_name(str(layer["digest"])))
        if not isinstance(config, dict):
            raise ImageError(f"{image.path}: the image config is not a JSON object")
        arch = config.get("architecture")
        if arch and arch != sif.host_arch():
            raise ImageError(f"{image.path} is built for {arch}; this host is {sif.host_arch()}")
        return f"oci-{key[:40]}", config, layers, source
    except (KeyError, TypeError, ValueError) as err:
        source.close()
        raise ImageError(f"{image.path}: malformed image metadata ({err})") from err
    except BaseException:
        source.close()
        raise


def unpacked(image: Image) -> tuple[Path, Path]:
    """The image unpacked into a sandbox in the cache: ``(directory, lock)``."""
    key, config, layers, source = describe(image)
    try:
        def build(target: Path) -> None:
            for name in layers:
                with source.open(name) as blob, _layer_tar(blob, name, image.path) as layer:
                    apply_layer(target, layer)
            singularity_layout(target, config)

        return cache.entry(key, build, what=f"image {image.path}")
    finally:
        source.close()


@contextlib.contextmanager
def _layer_tar(blob: IO[bytes], name: str, image_path: str) -> Iterator[tarfile.TarFile]:
    head = blob.read(4)
    blob.seek(0)
    if head == _ZSTD_MAGIC:
        zstd = shutil.which("zstd")
        if zstd is None:
            raise Unsupported(f"{image_path}: layer {name} is zstd-compressed; install zstd")
        with tempfile.TemporaryFile() as plain:
            process = subprocess.run([zstd, "-dc"], input=blob.read(), stdout=plain,
                                     stderr=subprocess.PIPE, check=False)
            if process.returncode != 0:
                raise ImageError(f"{image_path}: cannot decompress layer {name}")
            plain.seek(0)
            with tarfile.open(fileobj=plain, mode="r:") as tar:
                yield tar
        return
    try:
        with tarfile.open(fileobj=blob, mode="r:*") as tar:
            yield tar
    except tarfile.TarError as err:
        raise ImageError(f"{image_path}: layer {name} is not a (compressed) tar: {err}") from err


# -- applying layers -------------------------------------------------------------------------


def _clean(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"a layer entry escapes the image: {name!r}")
    return "/".join(parts)


def _in_root(root: str, path: str, *, create_parents: bool) -> str:
    """The host path of in-image ``path``, its parents resolved inside ``root``."""
    parent, _, base = path.rpartition("/")
    canonical, exists = pathwalk.resolve_in_root(root, parent or "/")
    if not exists:
        if not create_parents:
            return ""
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            pathwalk.create_in_root(fd, canonical, directory=True)
        finally:
            os.close(fd)
    return os.path.join(root, canonical.lstrip("/"), base)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        cache.remove_tree(Path(path))
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def apply_layer(root: str | os.PathLike[str], layer: tarfile.TarFile) -> None:
    """Apply one layer onto the root filesystem at ``root`` (OCI semantics)."""
    top = os.fspath(root)
    as_root = has_host_root()
    members = layer.getmembers()
    # Whiteouts first: they remove what lower layers have, never this layer's own entries.
    for member in members:
        name = _clean(member.name)
        parent, _, base = name.rpartition("/")
        if base == _OPAQUE:
            directory = _in_root(top, f"{parent}/x" if parent else "x", create_parents=False)
            directory = os.path.dirname(directory)
            if directory and os.path.isdir(directory):
                for child in os.listdir(directory):
                    _remove(os.path.join(directory, child))
        elif base.startswith(_WHITEOUT):
            target = _in_root(top, f"{parent}/{base[len(_WHITEOUT):]}".lstrip("/"),
                              create_parents=False)
            if target and os.path.lexists(target):
                _remove(target)
    directories: list[tuple[str, tarfile.TarInfo]] = []
    for member in members:
        name = _clean(member.name)
        if not name or name.rpartition("/")[2].startswith(_WHITEOUT):
            continue
        path = _in_root(top, name, create_parents=True)
        existing = os.path.lexists(path)
        if existing and not (member.isdir() and os.path.isdir(path)
                             and not os.path.islink(path)):
            _remove(path)
        if member.isdir():
            os.makedirs(path, mode=0o700, exist_ok=True)
            directories.append((path, member))
            continue
        if member.isreg():
            source = layer.extractfile(member)
            assert source is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out, source:
                shutil.copyfileobj(source, out, 1 << 20)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            target = _in_root(top, _clean(member.linkname), create_parents=False)
            if not target or not os.path.lexists(target):
                raise ImageError(f"a layer's hard link points to a missing file: {member.name}")
            os.link(target, path, follow_symlinks=False)
            continue  # the link shares the target's metadata
        elif member.isfifo():
            os.mkfifo(path)
        elif member.ischr() or member.isblk():
            if not as_root:
                continue  # an ordinary user cannot make device nodes; /dev is mounted anyway
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | (member.mode & 0o7777), os.makedev(member.devmajor,
                                                                      member.devminor))
        else:
            continue
        _set_metadata(path, member, as_root)
    # Directories last (deepest first): a read-only one would stop writes into it.
    for path, member in reversed(directories):
        _set_metadata(path, member, as_root)


def _set_metadata(path: str, member: tarfile.TarInfo, as_root: bool) -> None:
    link = member.issym()
    if as_root:
        with contextlib.suppress(OSError):
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if not link:
        mode = member.mode & (0o7777 if as_root else 0o777)
        if member.isdir():
            mode |= 0o700  # we must still be able to enter and change our own tree
        os.chmod(path, mode)
    with contextlib.suppress(OSError):
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


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


def singularity_layout(root: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write /.singularity.d for an OCI image config (env, runscript, labels)."""
    settings = config.get("config") or {}
    if not isinstance(settings, dict):
        settings = {}
    top = Path(root)
    meta = top / ".singularity.d"
    for directory in (meta / "env", meta / "libs", meta / "actions"):
        directory.mkdir(parents=True, exist_ok=True)
    for mount_point in ("proc", "sys", "dev", "tmp", "var/tmp", "home", "root", "etc"):
        (top / mount_point).mkdir(parents=True, exist_ok=True)
    env = [str(item) for item in settings.get("Env") or [] if isinstance(item, str)]
    (meta / "env" / "10-docker2singularity.sh").write_text(env_script(env))
    (meta / "env" / "10-docker2singularity.sh").chmod(0o755)
    entrypoint = [str(a) for a in settings.get("Entrypoint") or []]
    cmd = [str(a) for a in settings.get("Cmd") or []]
    (meta / "runscript").write_text(runscript(entrypoint, cmd, settings.get("WorkingDir")))
    (meta / "runscript").chmod(0o755)
    labels = settings.get("Labels") or {}
    (meta / "labels.json").write_text(json.dumps(labels if isinstance(labels, dict) else {},
                                                 indent=4, sort_keys=True) + "\n")
