"""An ordinary user's builds: the build namespace's ID maps, and removing what it made.

Files ``%post`` gives to other users inside belong to the caller's
subordinate IDs outside; only root of a user namespace with the same maps
can read (for ``mksquashfs``) or remove them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from instancelib.image import cache
from instancelib.linux.userns import has_host_root, user_namespace_plan

__all__ = ["fakeroot_plan", "in_fakeroot", "remove_build_tree"]

log = logging.getLogger("instancelib")


def fakeroot_plan() -> dict[str, Any] | None:
    """The ID maps of an ordinary user's build namespace, when they map subordinate IDs."""
    if has_host_root():
        return None
    plan, _note = user_namespace_plan(fakeroot=True)
    return plan if plan is not None and plan.get("helpers") else None


def in_fakeroot(plan: Mapping[str, Any], argv: list[str]) -> list[str]:
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
    plan = fakeroot_plan()
    if plan is None:
        log.warning("could not remove all of %s", target)
        return
    result = subprocess.run(in_fakeroot(plan, ["rm", "-rf", "--", str(target)]),
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or target.exists():
        log.warning("could not remove all of %s: %s", target, result.stderr.strip()[-300:])
