"""Bootstrap agents: the root filesystem a build stage starts from (``Bootstrap:``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from instancelib.build.busybox import find_static_busybox, make_busybox_rootfs
from instancelib.build.layout import copy_tree
from instancelib.build.progress import BuildProgress, ProgressCallback, stream_command
from instancelib.errors import DefinitionError, ImageError, Unsupported
from instancelib.image import oci
from instancelib.image.deffile import Definition
from instancelib.image.image import Image, unsquash_into
from instancelib.linux.userns import has_host_root

__all__ = ["bootstrap_root", "convert_image", "registry_source", "unreachable"]

_UNREACHABLE = {
    "docker": "a Docker/OCI registry", "library": "a Sylabs library", "oras": "an OCI registry",
    "shub": "Singularity Hub", "http": "the network", "https": "the network",
}


_MISSING_TOOL = {"yum": "yum", "zypper": "zypper", "arch": "pacstrap", "busybox-static": "",
                 "mocker": "mocker"}


def unreachable(agent: str, what: str) -> Unsupported:
    """The error for a source in a registry (``docker://``, ``Bootstrap: library``...)."""
    return Unsupported(f"{what} needs {_UNREACHABLE[agent]}, which this machine cannot "
                       "reach: registries are not supported; save the image locally "
                       "(docker-archive, oci-archive, SIF) and use Bootstrap: localimage "
                       "(or build from the file)")


def registry_source(source: str) -> Unsupported | None:
    """The error for a build source that names a registry (``docker://alpine``), else None."""
    scheme, sep, _rest = source.partition("://")
    if sep and scheme in _UNREACHABLE:
        return unreachable(scheme, f"the source {source}")
    return None


def _busybox(stage: Definition) -> str:
    """The busybox to install: ``MirrorURL:`` when it is a local file (``file://`` or a
    path), else the host's static one; a download is refused (no network here)."""
    mirror = stage.header.get("mirrorurl", "").strip()
    if not mirror:
        return find_static_busybox()
    path = mirror.removeprefix("file://")
    if "://" in path:
        raise Unsupported(f"Bootstrap: busybox MirrorURL {mirror}: downloading is not "
                          "supported here; give a local static busybox (MirrorURL: "
                          "file:///path/to/busybox) or leave MirrorURL out to use the "
                          "host's (Debian's busybox-static)")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise ImageError(f"Bootstrap: busybox MirrorURL {mirror}: not an executable file",
                         path=path)
    return path


def bootstrap_root(stage: Definition, agent: str, root: Path, report: ProgressCallback) -> None:
    source = stage.header.get("from", "")
    if agent == "scratch":
        root.mkdir()
    elif agent == "busybox":
        make_busybox_rootfs(root, busybox=_busybox(stage))
    elif agent in ("localimage", "oci", "oci-archive", "docker-archive"):
        path = source.split(":", 1)[0] if agent == "oci" and not os.path.exists(source) else source
        if not path:
            raise DefinitionError(f"Bootstrap: {agent} needs a From: path", line=stage.line)
        image = Image(path)
        expected = {"oci": "oci-layout", "oci-archive": "oci-archive",
                    "docker-archive": "docker-archive"}.get(agent)
        if expected is not None and image.kind != expected:
            raise ImageError(f"Bootstrap: {agent} expects an {expected}; {path} is a "
                             f"{image.kind} (Bootstrap: localimage takes any image)")
        convert_image(image, root, report)
    elif agent == "debootstrap":
        _debootstrap(stage, root, report)
    elif agent in _UNREACHABLE:
        raise unreachable(agent, f"Bootstrap: {agent}")
    else:
        tool = _MISSING_TOOL.get(agent, agent)
        raise Unsupported(f"Bootstrap: {agent} is not supported here"
                          + (f" (it needs {tool})" if tool else ""))


def _debootstrap(stage: Definition, root: Path, report: ProgressCallback) -> None:
    if not has_host_root():
        raise Unsupported("Bootstrap: debootstrap needs root (it creates device nodes and "
                          "sets owners); build as root, or from a saved image")
    tool = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if tool is None:
        raise Unsupported("Bootstrap: debootstrap needs debootstrap (Debian package debootstrap)")
    suite = stage.header.get("osversion") or "stable"
    mirror = stage.header.get("mirrorurl") or "http://deb.debian.org/debian"
    argv = [tool, "--variant=minbase"]
    include = stage.header.get("include", "").replace(" ", ",").strip(",")
    if include:
        argv.append(f"--include={include}")
    argv += [suite, str(root), mirror]
    stream_command(argv, None, "debootstrap", report)


def convert_image(image: Image, root: Path, report: ProgressCallback) -> None:
    """Unpack any image into ``root`` as a sandbox."""
    report(BuildProgress(f"unpack {image.kind} {image.path}"))
    if image.kind == "sandbox":
        root.mkdir()
        copy_tree(f"{image.path}/.", str(root))
    elif image.kind in ("sif", "squashfs"):
        root.mkdir()
        details = image._details
        unsquash_into(os.path.realpath(image.path), details["offset"], root)
    else:
        root.mkdir()
        oci.unpack_into(image, root)
