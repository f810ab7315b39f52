"""Build images from definition files, or convert between image kinds.

A build, per stage of the definition:

1. bootstrap a root filesystem: ``scratch`` (empty), ``busybox`` (the host's
   static busybox), ``localimage`` (any image ``Image`` opens), ``oci``,
   ``oci-archive``, ``docker-archive`` (an OCI layout or archive on disk), or
   ``debootstrap`` (Debian's tool, with ``OSVersion``, ``MirrorURL``,
   ``Include``); agents that need a registry this machine cannot reach
   (``docker``, ``library``, ``oras``, ``shub``) or tools it lacks (``yum``,
   ``zypper``...) raise ``Unsupported``;
2. ``%setup`` on the host, with ``APPTAINER_ROOTFS``/``SINGULARITY_ROOTFS``
   (``%pre``, before the bootstrap, also on the host);
3. ``%files`` (from the host, or ``from STAGE``);
4. ``%post`` inside the image (an instance of it, root inside; the host's
   network), with ``$APPTAINER_ENVIRONMENT`` for variables to keep;
5. the ``/.singularity.d`` layout (env scripts, runscript, startscript, test,
   labels, help, the definition), SCIF apps under ``/scif/apps``;
6. ``%test`` unless ``notest``;
7. the output: a sandbox directory, or a SIF file (a squashfs made with
   ``mksquashfs``, with the definition and labels as objects, laid out as
   Apptainer lays out its own).

Long steps report ``BuildProgress`` to a callback.  A failed build leaves no
partial target and no mounts behind.
"""

from __future__ import annotations

import datetime
import errno
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from instancelib.errors import (
    DefinitionError,
    ImageError,
    InstanceError,
    PermissionDenied,
    Unsupported,
)
from instancelib.image import cache, oci, sif
from instancelib.image.busybox import find_static_busybox, make_busybox_rootfs
from instancelib.image.deffile import Definition, Script
from instancelib.image.image import Image, unsquash_into
from instancelib.image.inspect import METADATA_OBJECT, read_tree
from instancelib.launchplan import user_namespace_plan
from instancelib.linux import pathwalk
from instancelib.linux.userns import has_host_root

__all__ = ["BuildProgress", "build", "remove_build_tree"]

log = logging.getLogger("instancelib")

_UNREACHABLE = {
    "docker": "a Docker/OCI registry", "library": "a Sylabs library", "oras": "an OCI registry",
    "shub": "Singularity Hub", "http": "the network", "https": "the network",
}
_MISSING_TOOL = {"yum": "yum", "zypper": "zypper", "arch": "pacstrap", "busybox-static": "",
                 "mocker": "mocker"}
BASE_ENV = """#!/bin/sh
# instancelib: the default environment of an image
if [ -z "${PATH:-}" ]; then
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fi
export PATH
"""


@attrs.frozen
class BuildProgress:
    """A step of a build: ``step`` names it; ``fraction`` (0..1) when known; ``output`` a line
    the step printed (``%post``, ``%test``...)."""

    step: str
    fraction: float | None = None
    output: str | None = None


ProgressCallback = Callable[[BuildProgress], None]


def build(
    source: Definition | Sequence[Definition] | Image | str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    sandbox: bool = False,
    build_args: Mapping[str, str] | None = None,
    notest: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> Image:
    """Build ``target`` (a SIF file, or a sandbox directory) from ``source``.

    ``source`` is a ``Definition`` (or its stages), a path to a definition
    file, or an image (``Image`` or a path ``Image`` opens), which is converted.

    Raises:
        DefinitionError: a malformed definition.
        ImageError: a bad source image, or a target that exists (without ``force``).
        Unsupported: a bootstrap agent this machine cannot serve.
        InstanceError: a failing ``%setup``/``%post``/``%test`` (the message says which).
    """
    report = progress or (lambda _event: None)
    target_path = Path(os.path.abspath(os.fspath(target)))
    stages = _stages(source, build_args)
    if (target_path.exists() or target_path.is_symlink()) and not force:
        raise ImageError("the build target exists (use force=True to replace it)",
                         path=str(target_path))
    try:
        target_path.parent.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".instancelib-build-", dir=target_path.parent))
    except OSError as err:
        error = PermissionDenied if err.errno in (errno.EACCES, errno.EPERM) else ImageError
        raise error("cannot write in the build target's directory",
                    path=str(target_path.parent), errno=err.errno) from err
    try:
        roots: dict[str, Path] = {}
        final: Path | None = None
        final_definition: Definition | None = None
        for index, stage in enumerate(stages):
            root = workdir / f"stage{index}"
            if isinstance(stage, Image):
                _convert(stage, root, report)
                final_definition = None
            else:
                _build_stage(stage, root, roots, workdir, notest=notest, report=report)
                final_definition = stage
            roots[stage.stage if isinstance(stage, Definition) and stage.stage
                  else str(index)] = root
            final = root
        assert final is not None
        if sandbox:
            report(BuildProgress("write the sandbox"))
            _replace(target_path, final, force=force)
        else:
            _write_sif(final, target_path, final_definition, workdir, force=force, report=report)
        report(BuildProgress("done", 1.0))
        return Image(target_path)
    except InstanceError:
        raise
    except OSError as err:
        raise ImageError(f"the build failed: {err.strerror or err}", path=err.filename,
                         errno=err.errno) from err
    finally:
        remove_build_tree(workdir)


def _stages(source: Any, build_args: Mapping[str, str] | None) -> list[Definition | Image]:
    if isinstance(source, Definition):
        return [source]
    if isinstance(source, Image):
        return [source]
    if isinstance(source, (list, tuple)):
        return list(source)
    path = os.fspath(source)
    if os.path.isfile(path) and not _looks_like_image(path):
        return list(Definition.stages_from_file(path, build_args=build_args))
    return [Image(path)]


def _looks_like_image(path: str) -> bool:
    try:
        Image(path)
    except ImageError:
        return False
    return True


def _replace(target: Path, built: Path, *, force: bool) -> None:
    if target.exists() or target.is_symlink():
        if not force:
            raise ImageError("the build target exists", path=str(target))
        if target.is_dir() and not target.is_symlink():
            remove_build_tree(target)
        else:
            target.unlink()
    os.rename(built, target)


# -- one stage ---------------------------------------------------------------------------------


def _build_stage(stage: Definition, root: Path, roots: Mapping[str, Path], workdir: Path, *,
                 notest: bool, report: ProgressCallback) -> None:
    agent = stage.bootstrap or "scratch"
    pre = stage.section("pre")
    if pre.script.strip():
        report(BuildProgress("%pre"))  # on the host, before there is a root filesystem
        _run_on_host(pre, {}, workdir, "%pre", report)
    report(BuildProgress(f"bootstrap ({agent})"))
    _bootstrap(stage, agent, root, report)
    _ensure_layout(root)
    env = {"APPTAINER_ROOTFS": str(root), "SINGULARITY_ROOTFS": str(root)}
    setup = stage.section("setup")
    if setup.script.strip():
        report(BuildProgress("%setup"))
        _run_on_host(setup, env, workdir, "%setup", report)
    for args, copies in stage.files:
        report(BuildProgress(f"%files {args}".strip()))
        _copy_files(args, copies, root, roots)
    post = stage.section("post")
    if post.script.strip() or stage.apps:
        report(BuildProgress("%post"))
        _run_inside(root, post, "%post", report, workdir, apps=stage)
    _write_layout(root, stage)
    test = stage.section("test")
    if test.script.strip() and not notest:
        report(BuildProgress("%test"))
        _run_inside(root, Script(test.args, ". /.singularity.d/test\n"), "%test", report,
                    workdir, read_only=True)


def _bootstrap(stage: Definition, agent: str, root: Path, report: ProgressCallback) -> None:
    source = stage.header.get("from", "")
    if agent == "scratch":
        root.mkdir()
    elif agent == "busybox":
        make_busybox_rootfs(root, busybox=find_static_busybox())
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
        _convert(image, root, report)
    elif agent == "debootstrap":
        _debootstrap(stage, root, report)
    elif agent in _UNREACHABLE:
        raise Unsupported(f"Bootstrap: {agent} needs {_UNREACHABLE[agent]}, which this machine "
                          "cannot reach; save the image locally (docker-archive, oci-archive, "
                          "SIF) and use Bootstrap: localimage")
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
    _stream(argv, None, "debootstrap", report)


def _convert(image: Image, root: Path, report: ProgressCallback) -> None:
    """Unpack any image into ``root`` as a sandbox."""
    report(BuildProgress(f"unpack {image.kind} {image.path}"))
    if image.kind == "sandbox":
        root.mkdir()
        _copy(f"{image.path}/.", str(root))
    elif image.kind in ("sif", "squashfs"):
        root.mkdir()
        details = image._details
        unsquash_into(os.path.realpath(image.path), details["offset"], root)
    else:
        root.mkdir()
        oci.unpack_into(image, root)


def _ensure_layout(root: Path) -> None:
    for directory in (".singularity.d/env", ".singularity.d/actions", ".singularity.d/libs",
                      "proc", "sys", "dev", "tmp", "var/tmp", "home", "root", "etc", "mnt"):
        target = root / directory
        if not target.is_dir() and not target.is_symlink():
            target.mkdir(parents=True, exist_ok=True)
    for sticky in ("tmp", "var/tmp"):
        if (root / sticky).is_dir() and not (root / sticky).is_symlink():
            os.chmod(root / sticky, 0o1777)
    base = root / ".singularity.d/env/01-base.sh"
    if not base.exists():
        base.write_text(BASE_ENV)
        base.chmod(0o755)
    for name in ("90-environment.sh", "91-environment.sh"):
        script = root / ".singularity.d/env" / name
        if not script.exists():
            script.write_text("#!/bin/sh\n")
            script.chmod(0o755)


def _copy_files(args: str, copies: Sequence[Any], root: Path, roots: Mapping[str, Path]) -> None:
    words = args.split()
    base = Path("/")
    if words:
        if len(words) != 2 or words[0] != "from" or words[1] not in roots:
            raise DefinitionError(f"%files {args}: expected 'from STAGE' naming an earlier stage "
                                  f"(known: {', '.join(roots) or 'none'})")
        base = roots[words[1]]
    for copy in copies:
        pattern = copy.source if not words else str(base / copy.source.lstrip("/"))
        matches = sorted(glob.glob(os.path.expanduser(pattern))) if any(
            c in pattern for c in "*?[") else [os.path.expanduser(pattern)]
        if not matches or not all(os.path.lexists(m) for m in matches):
            raise ImageError(f"%files: {copy.source} not found")
        destination = copy.destination or copy.source
        for match in matches:
            where = destination
            if len(matches) > 1 or destination.endswith("/"):
                where = os.path.join(destination, os.path.basename(match))
            canonical, exists = pathwalk.resolve_in_root(str(root), where)
            if exists and os.path.isdir(root / canonical.lstrip("/")):
                canonical = os.path.join(canonical, os.path.basename(match))
            parent = (root / canonical.lstrip("/")).parent
            parent.mkdir(parents=True, exist_ok=True)
            _copy(match, str(root / canonical.lstrip("/")))


def _copy(source: str, destination: str) -> None:
    """``cp -a`` (owners, modes, times, links and special files kept)."""
    result = subprocess.run(["cp", "-a", "--reflink=auto", "--", source, destination],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"cannot copy {source} to {destination}: "
                         f"{result.stderr.strip()[-500:] or 'cp failed'}")


# -- running scripts ---------------------------------------------------------------------------


def _interpreter(script: Script) -> list[str]:
    words = script.args.split()
    if "-c" in words and words.index("-c") + 1 < len(words):
        return [words[words.index("-c") + 1]]
    return ["/bin/sh"]


# mksquashfs's progress bar: "[====  /  ] 1200/4755  25%", redrawn after a carriage return.
_PROGRESS_BAR = re.compile(r"\[.*\]\s+(\d+)/(\d+)\s+(\d+)%\s*$")


def _stream(argv: list[str], env: Mapping[str, str] | None, what: str,
            report: ProgressCallback, cwd: str | None = None) -> None:
    """Run ``argv``, reporting each line it prints (a progress bar's updates as fractions)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=None if env is None else {**os.environ, **env}, cwd=cwd,
                               text=True, errors="replace")  # universal newlines: \r ends lines
    assert process.stdout is not None
    tail: list[str] = []
    shown = -1
    for raw in process.stdout:
        line = raw.rstrip("\n")
        bar = _PROGRESS_BAR.search(line)
        if bar:
            percent = int(bar.group(3))
            if percent != shown:
                shown = percent
                report(BuildProgress(what, fraction=min(percent, 100) / 100))
            continue
        if not line.strip():
            continue
        report(BuildProgress(what, output=line))
        tail = [*tail[-19:], line]
    if process.wait() != 0:
        raise InstanceError(f"{what} failed with exit status {process.returncode}",
                            detail="\n".join(tail))


def _run_on_host(script: Script, env: Mapping[str, str], workdir: Path, what: str,
                 report: ProgressCallback) -> None:
    path = workdir / "host-script.sh"
    path.write_text(script.script)
    _stream([*_interpreter(script), "-e", str(path)], env, what, report, cwd=str(workdir))


def _run_inside(root: Path, script: Script, what: str, report: ProgressCallback, workdir: Path,
                *, read_only: bool = False, apps: Definition | None = None) -> None:
    """Run ``script`` in an instance of the image being built (root inside, host network)."""
    from instancelib.instance import Instance  # noqa: PLC0415 (instance imports image)
    from instancelib.registry import InstanceRegistry  # noqa: PLC0415

    script_path = root / ".build-script"
    body = script.script
    if apps is not None:
        body += _app_install_script(apps)
    script_path.write_text(body)
    registry = InstanceRegistry(workdir / "registry")
    image = Image(root) if read_only else Image._build_root(root)
    env = {"APPTAINER_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
           "SINGULARITY_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
           "APPTAINER_ROOTFS": "/", "SINGULARITY_ROOTFS": "/",
           "DEBIAN_FRONTEND": "noninteractive"}
    instance = Instance.start(image, f"build-{uuid.uuid4().hex[:12]}", registry=registry,
                              contain=True, cleanenv=True, env=env,
                              fakeroot=not has_host_root())
    try:
        process = instance.popen([*_interpreter(script), "-e", "/.build-script"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
        assert process.stdout is not None
        tail: list[str] = []
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            report(BuildProgress(what, output=line))
            tail = [*tail[-19:], line]
        process.stdout.close()
        if process.wait() != 0:
            raise InstanceError(f"{what} failed with exit status {process.returncode}",
                                detail="\n".join(tail))
    finally:
        instance.stop(force=True)
        script_path.unlink(missing_ok=True)


def _app_install_script(stage: Definition) -> str:
    """Shell for the SCIF apps: their directories, files and %appinstall, in order."""
    lines = []
    for app in stage.app_order:
        base = f"/scif/apps/{app}"
        lines.append(f'mkdir -p "{base}/scif/env" "{base}/bin" "{base}/lib"')
        install = stage.apps.get(f"appinstall {app}")
        if install:
            lines.append(f'(cd "{base}" && {install.strip()}\n)')
    return "\n".join(lines) + ("\n" if lines else "")


# -- the image's metadata ----------------------------------------------------------------------


def _trimmed(body: str) -> str:
    """A section's text without its leading and trailing blank lines, ending in a newline."""
    lines = body.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "".join(line + "\n" for line in lines)


def _script_file(body: str, default_interpreter: str = "/bin/sh") -> str:
    text = _trimmed(body)
    if text.lstrip().startswith("#!"):
        return text.lstrip()
    return f"#!{default_interpreter}\n\n{text}"


def _write_layout(root: Path, stage: Definition) -> None:
    meta = root / ".singularity.d"
    environment = stage.section("environment").script
    if environment.strip():
        (meta / "env/90-environment.sh").write_text(f"#!/bin/sh\n{_trimmed(environment)}")
    for name, section in (("runscript", "runscript"), ("startscript", "startscript"),
                          ("test", "test")):
        body = stage.section(section).script
        if body.strip():
            path = meta / name
            path.write_text(_script_file(body))
            path.chmod(0o755)
    help_text = stage.section("help").script
    if help_text.strip():
        (meta / "runscript.help").write_text(_trimmed(help_text))
    (meta / "Singularity").write_text(stage.raw)
    labels_file = meta / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.exists() else {}
    from instancelib import __version__  # noqa: PLC0415 (the package imports this module)

    labels.update({
        "org.label-schema.build-date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%A_%-d_%B_%Y_%-H:%M:%S_%Z"),
        "org.label-schema.schema-version": "1.0",
        "org.label-schema.build-arch": sif.host_arch(),
        "org.label-schema.usage.instancelib.version": __version__,
    })
    if help_text.strip():
        labels["org.label-schema.usage"] = "/.singularity.d/runscript.help"
        labels["org.label-schema.usage.singularity.runscript.help"] = (
            "/.singularity.d/runscript.help")
    for key, value in (("bootstrap", stage.bootstrap), ("from", stage.header.get("from"))):
        if value:
            labels[f"org.label-schema.usage.singularity.deffile.{key}"] = value
    labels.update(stage.labels)
    labels_file.write_text(json.dumps(labels, indent=4, sort_keys=True) + "\n")
    for app in stage.app_order:
        base = root / "scif/apps" / app / "scif"
        base.mkdir(parents=True, exist_ok=True)
        for section, name in (("apprun", "runscript"), ("apptest", "test"),
                              ("appstart", "startscript")):
            app_body = stage.apps.get(f"{section} {app}")
            if app_body:
                (base / name).write_text(_script_file(app_body))
                (base / name).chmod(0o755)
        if stage.apps.get(f"appenv {app}"):
            (base / "env").mkdir(exist_ok=True)
            (base / "env/90-environment.sh").write_text(
                f"#!/bin/sh\n{_trimmed(stage.apps[f'appenv {app}'])}")
        if stage.apps.get(f"apphelp {app}"):
            (base / "runscript.help").write_text(_trimmed(stage.apps[f"apphelp {app}"]))
        app_labels = stage.apps.get(f"applabels {app}")
        if app_labels:
            pairs = dict(line.strip().partition(" ")[::2] for line in app_labels.splitlines()
                         if line.strip() and not line.strip().startswith("#"))
            (base / "labels.json").write_text(json.dumps(pairs, indent=4) + "\n")


# -- SIF output --------------------------------------------------------------------------------


def _write_sif(root: Path, target: Path, definition: Definition | None, workdir: Path, *,
               force: bool, report: ProgressCallback) -> None:
    tool = shutil.which("mksquashfs")
    if tool is None:
        raise Unsupported("building a SIF needs mksquashfs (Debian package squashfs-tools)")
    squashfs = workdir / "root.squashfs"
    report(BuildProgress("mksquashfs", 0.0))
    argv = [tool, str(root), str(squashfs), "-noappend", "-quiet"]  # -quiet keeps the bar
    fakeroot = _fakeroot_plan()
    if fakeroot is not None:
        # Root of the build's user namespace reads every file %post made (some
        # belong to subordinate IDs) and records owners as they are inside.
        argv = _in_fakeroot(fakeroot, argv)
    elif not has_host_root():
        argv.append("-all-root")  # the user's files belong to root in the image
    started = time.monotonic()
    _stream(argv, None, "mksquashfs", report)
    log.debug("mksquashfs took %.2f s", time.monotonic() - started)
    deffile = definition.full_raw.encode() if definition is not None else _existing_deffile(root)
    labels_path = root / ".singularity.d/labels.json"
    labels = labels_path.read_bytes() if labels_path.exists() else b"{}"
    metadata = read_tree(root)
    if deffile:
        metadata = attrs.evolve(metadata, deffile=deffile.decode(errors="replace").rstrip("\n"))
    # Apptainer's order: the definition, the JSON objects, the root filesystem.
    objects = []
    if deffile:
        objects.append(sif.SIFObject(data_type=sif.DATA_DEFFILE, data=deffile))
    objects.append(sif.SIFObject(data_type=sif.DATA_LABELS, data=labels))
    objects.append(sif.SIFObject(data_type=sif.DATA_GENERIC_JSON,
                                 data=json.dumps(metadata.to_dict(), indent="\t").encode(),
                                 name=METADATA_OBJECT))
    objects.append(sif.SIFObject(data_type=sif.DATA_PARTITION, data=squashfs,
                                 fs_type=sif.FS_SQUASHFS, part_type=sif.PART_PRIMARY_SYSTEM,
                                 arch=sif.host_arch(), alignment=4096))
    report(BuildProgress("write the SIF"))
    if target.is_dir() and not target.is_symlink():
        if not force:
            raise ImageError("the build target exists", path=str(target))
        remove_build_tree(target)
    sif.write_sif(target, objects)


def _existing_deffile(root: Path) -> bytes:
    path = root / ".singularity.d/Singularity"
    return path.read_bytes() if path.is_file() else b""


# -- ordinary users' builds ----------------------------------------------------------------------


def _fakeroot_plan() -> dict[str, Any] | None:
    """The ID maps of an ordinary user's build namespace, when they map subordinate IDs."""
    if has_host_root():
        return None
    plan, _note = user_namespace_plan(fakeroot=True)
    return plan if plan is not None and plan.get("helpers") else None


def _in_fakeroot(plan: Mapping[str, Any], argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "instancelib.linux.fakerootexec", json.dumps(plan), *argv]


def remove_build_tree(path: str | os.PathLike[str]) -> None:
    """Remove a build's tree (a scratch root, or a sandbox an ordinary user built).

    Files ``%post`` gave to other users inside belong to the caller's
    subordinate IDs outside; the caller removes those as root of a user
    namespace with the build's maps.
    """
    target = Path(path)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
        return
    cache.remove_tree(target)
    if not target.exists() and not target.is_symlink():
        return
    plan = _fakeroot_plan()
    if plan is None:
        log.warning("could not remove all of %s", target)
        return
    result = subprocess.run(_in_fakeroot(plan, ["rm", "-rf", "--", str(target)]),
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or target.exists():
        log.warning("could not remove all of %s: %s", target, result.stderr.strip()[-300:])
