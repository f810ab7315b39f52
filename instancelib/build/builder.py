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

import errno
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from instancelib.build.bootstrap import bootstrap_root, convert_image, registry_source
from instancelib.build.fakeroot import remove_build_tree
from instancelib.build.layout import copy_files, ensure_layout, write_layout
from instancelib.build.progress import BuildProgress, ProgressCallback, reporting
from instancelib.build.sections import run_in_instance, run_on_host
from instancelib.build.sif_output import write_sif_image
from instancelib.errors import ImageError, InstanceError, PermissionDenied
from instancelib.image.deffile import Definition, Script
from instancelib.image.image import Image

__all__ = ["build_image"]


def build_image(
    source: Definition | Sequence[Definition] | Image | str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    sandbox: bool = False,
    build_args: Mapping[str, str] | None = None,
    notest: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> Image:
    """Build an image, as ``apptainer build`` does, and return it.

    Args:
        definition: a ``Definition`` (or the stages of a multi-stage
            build), a definition file's path, or an image (an ``Image`` or
            a path ``Image`` opens), which is converted.
        target: the SIF file to write, or with ``sandbox`` the directory.
        sandbox: write a sandbox directory instead of a SIF file.
        build_args: values for the definition's ``{{ NAME }}`` arguments
            (over its ``%arguments`` defaults); for a definition file.
        notest: skip ``%test``.
        force: replace an existing ``target``.
        progress: called with a ``BuildProgress`` for each step and for
            each line ``%setup``/``%post``/``%test`` print.  Without one, a
            build in a Jupyter notebook shows a progress bar
            (``build.progress.NotebookBar``); elsewhere it is silent.

    Raises:
        DefinitionError: a malformed definition, or a build argument without a value.
        ImageError: a bad source image, a missing ``%files`` source, or an
            existing target without ``force``.
        Unsupported: a bootstrap agent (or tool) this machine cannot serve.
        BuildError: ``%setup``, ``%post`` or ``%test`` failed (the
            message says which, ``detail`` holds its last lines of output).

    A failed build leaves neither a partial target nor a mount behind.
    """
    with reporting(progress) as report:
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
                    convert_image(stage, root, report)
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
                write_sif_image(final, target_path, final_definition, workdir, force=force,
                                report=report)
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
    refused = registry_source(path) if not os.path.exists(path) else None
    if refused is not None:
        raise refused
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


def _build_stage(stage: Definition, root: Path, roots: Mapping[str, Path], workdir: Path, *,
                 notest: bool, report: ProgressCallback) -> None:
    agent = stage.bootstrap or "scratch"
    pre = stage.section("pre")
    if pre.script.strip():
        report(BuildProgress("%pre"))  # on the host, before there is a root filesystem
        run_on_host(pre, {}, workdir, "%pre", report)
    report(BuildProgress(f"bootstrap ({agent})"))
    bootstrap_root(stage, agent, root, report)
    ensure_layout(root)
    env = {"APPTAINER_ROOTFS": str(root), "SINGULARITY_ROOTFS": str(root)}
    setup = stage.section("setup")
    if setup.script.strip():
        report(BuildProgress("%setup"))
        run_on_host(setup, env, workdir, "%setup", report)
    for args, copies in stage.files:
        report(BuildProgress(f"%files {args}".strip()))
        copy_files(args, copies, root, roots)
    post = stage.section("post")
    if post.script.strip() or stage.apps:
        report(BuildProgress("%post"))
        run_in_instance(root, post, "%post", report, workdir, apps=stage)
    write_layout(root, stage)
    test = stage.section("test")
    if test.script.strip() and not notest:
        report(BuildProgress("%test"))
        run_in_instance(root, Script(test.args, ". /.singularity.d/test\n"), "%test", report,
                    workdir, read_only=True)
