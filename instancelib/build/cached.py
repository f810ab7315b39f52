"""``build_cached``: build a definition once, keyed by its text, and reuse the image.

For notebooks and test suites that need the same service image run after
run: the image is kept in a cache directory under the hash of the
definition's text, its build arguments and its kind, so a changed definition
builds anew and an unchanged one costs a directory lookup.  A build that
fails leaves nothing in the cache; two processes building the same key at
once each build, and the last rename wins (both images are the same).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from instancelib.build.builder import build_image
from instancelib.build.fakeroot import remove_build_tree
from instancelib.build.progress import ProgressCallback
from instancelib.foreground import Image

__all__ = ["build_cached", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$INSTANCELIB_BUILD_CACHE``, else ``$XDG_CACHE_HOME/instancelib/builds`` (``~/.cache``)."""
    explicit = os.environ.get("INSTANCELIB_BUILD_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "instancelib" / "builds"


def build_cached(definition: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] |
                 None = None, build_args: Mapping[str, str] | None = None,
                 sandbox: bool = False, progress: ProgressCallback | None = None) -> Image:
    """The image of ``definition`` (a file's path, or a definition's text), built on first use.

    Args:
        cache_dir: where images are kept (default ``default_cache_dir()``).
        build_args, sandbox, progress: as ``build_image``'s.

    Raises:
        What ``build_image`` raises; ``OSError`` subclasses from reading ``definition``.
    """
    text = definition if isinstance(definition, str) and "\n" in definition else \
        Path(definition).read_text()
    key = hashlib.sha256(json.dumps(
        [text, sorted((build_args or {}).items()), sandbox]).encode()).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = cache / (key if sandbox else f"{key}.sif")
    if not target.exists():
        source = cache / f"{key}.def"
        source.write_text(text)
        partial = cache / f".{key}.{os.getpid()}.building{'' if sandbox else '.sif'}"
        try:
            build_image(str(source), partial, sandbox=sandbox, build_args=build_args,
                        force=True, progress=progress)
            partial.rename(target)
        except BaseException:
            _remove(partial)
            if not target.exists():
                raise  # (else another process built it meanwhile: use theirs)
    return Image(target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_build_tree(path)
    else:
        path.unlink(missing_ok=True)
