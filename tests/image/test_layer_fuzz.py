"""Property: no OCI layer stream can change anything outside the directory it unpacks into.

Hypothesis writes layers of links (relative, absolute, climbing, pointing at a sibling
directory of the cache), whiteouts (``.wh.`` names, opaque markers, ``.wh..``), odd
modes, hard links, FIFOs, duplicate names, ``.`` and ``..``; each image is unpacked for
real.  The sibling directory must be byte for byte and mode for mode as it was, and
every failure must be an ``ImageError``.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instancelib import Image, ImageError
from instancelib.image import cache, oci
from tests.image.ocihelpers import entry, layer_tar, make_layout

NAMES = ["a", "b", "a/b", "a/b/c", "b/a", "c", ".", "./a", "/a", "a//b", "..", "a/..",
         "../x", "a/../../x", ".wh.a", "a/.wh.b", ".wh.b", ".wh..wh..opq", "a/.wh..wh..opq",
         ".wh..", ".wh...", "a/.wh..", ".wh..wh.plnk", "a/b/.wh.c", "d/e/f/g"]
MODES = [0o755, 0o644, 0o6777, 0o000, 0o4755, 0o1777, 0o700, 0o555]


def _targets(outside: str) -> list[str]:
    return ["a", "b", "a/b", "/", "..", "../..", "../../..", "../../../../outside",
            "../../../../../../../../outside/file", outside, f"{outside}/file",
            f"{outside}/dir", f"{outside}/missing", "/a", "/nonexistent/x", "a/../..", "."]


@pytest.fixture(scope="module")
def playground(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _outside(playground: Path) -> Path:
    outside = playground / "outside"
    if not outside.exists():
        outside.mkdir()
        (outside / "file").write_text("host file")
        (outside / "file").chmod(0o644)
        (outside / "dir").mkdir()
        (outside / "dir" / "inner").write_text("inner")
        (outside / "link").symlink_to("file")
    return outside


def _snapshot(directory: Path) -> dict[str, Any]:
    found: dict[str, Any] = {".": stat.S_IMODE(os.lstat(directory).st_mode)}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            content: Any = None
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = Path(path).read_bytes()
            found[os.path.relpath(path, directory)] = (info.st_mode, info.st_uid, info.st_gid,
                                                      info.st_mtime_ns, content)
    return found


@st.composite
def layer_entries(draw: st.DrawFn, outside: str) -> list[Any]:
    made = []
    for _ in range(draw(st.integers(min_value=1, max_value=10))):
        kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "file",
                                     "dir", "symlink"]))
        name = draw(st.sampled_from(NAMES))
        mode = draw(st.sampled_from(MODES))
        if kind == "symlink":
            made.append(entry("symlink", name, draw(st.sampled_from(_targets(outside)))))
        elif kind == "hardlink":
            made.append(entry("hardlink", name, draw(st.sampled_from(NAMES + _targets(outside))),
                              mode=mode))
        elif kind == "file":
            made.append(entry("file", name, draw(st.binary(max_size=64)), mode=mode))
        else:
            made.append(entry(kind, name, mode=mode))
    return made


EXAMPLES = int(os.environ.get("INSTANCELIB_FUZZ_EXAMPLES", "150"))


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_layer_changes_anything_outside_the_unpack_directory(playground, data):
    outside = _outside(playground)
    before = _snapshot(outside)
    layers = [layer_tar(data.draw(layer_entries(str(outside)), label=f"layer {i}"))
              for i in range(data.draw(st.integers(min_value=1, max_value=3), label="layers"))]
    work = Path(tempfile.mkdtemp(dir=playground, prefix="case-"))
    previous = os.environ.get("INSTANCELIB_CACHE")
    os.environ["INSTANCELIB_CACHE"] = str(work / "cache")
    try:
        image = Image(make_layout(work / "layout", layers))
        try:
            root, _lock = oci.unpacked(image)
        except ImageError:
            root = None
        if root is not None:  # a real directory, with the Singularity layout in it
            assert stat.S_ISDIR(os.lstat(root / ".singularity.d").st_mode)
            assert stat.S_ISREG(os.lstat(root / ".singularity.d" / "runscript").st_mode)
        assert _snapshot(outside) == before
        assert sorted(os.listdir(playground)) == sorted(["outside", work.name])
    finally:
        if previous is None:
            os.environ.pop("INSTANCELIB_CACHE", None)
        else:
            os.environ["INSTANCELIB_CACHE"] = previous
        cache.remove_tree(work)
        shutil.rmtree(work, ignore_errors=True)
    assert not work.exists()
