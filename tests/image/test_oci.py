"""OCI layer semantics with hand-made layers: whiteouts, opaque directories, links, escapes.

(podman's archives, used in test_running_images.py, have a single layer: these layers are
written here to reach every rule of the format.)
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from instancelib import Image, ImageError
from instancelib.image import oci
from instancelib.linux.userns import has_host_root
from tests.image.ocihelpers import layer_tar, make_layout


def _layer(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    return layer_tar(entries)


@pytest.fixture
def unpacked(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("INSTANCELIB_CACHE", str(tmp_path / "cache"))

    def unpack(layers: list[bytes], config: dict | None = None) -> Path:
        layout = make_layout(tmp_path / f"layout{len(list(tmp_path.iterdir()))}", layers, config)
        directory, _lock = oci.unpacked(Image(layout))
        return directory

    return unpack


def test_layers_apply_in_order_with_whiteouts_and_opaque_directories(unpacked):
    base = _layer([
        ("dir", "etc", b""), ("file", "etc/keep", "k"), ("file", "etc/gone", "g"),
        ("dir", "data", b""), ("file", "data/old1", "1"), ("dir", "data/sub", b""),
        ("file", "data/sub/old2", "2"), ("file", "replaced", "was a file"),
        ("file", "etc/secret", "s"),
    ])
    top = _layer([
        ("file", "etc/.wh.gone", b""),
        ("dir", "data", b""), ("file", "data/.wh..wh..opq", b""), ("file", "data/new", "n"),
        ("dir", "replaced", b""), ("file", "replaced/inside", "now a dir"),
    ])
    root = unpacked([base, top])
    assert (root / "etc/keep").read_text() == "k"
    assert not (root / "etc/gone").exists()
    assert sorted(p.name for p in (root / "data").iterdir()) == ["new"]
    assert (root / "replaced/inside").read_text() == "now a dir"
    assert stat.S_IMODE((root / "etc/secret").stat().st_mode) == 0o640
    assert not list(root.rglob(".wh.*"))


def test_whiteout_of_a_directory_removes_its_tree(unpacked):
    base = _layer([("dir", "opt", b""), ("dir", "opt/tool", b""), ("file", "opt/tool/bin", "x")])
    root = unpacked([base, _layer([("file", "opt/.wh.tool", b"")])])
    assert list((root / "opt").iterdir()) == []


def test_hard_links_are_kept(unpacked):
    root = unpacked([_layer([("file", "a", "same"), ("hardlink", "b", "a")])])
    assert os.stat(root / "a").st_ino == os.stat(root / "b").st_ino


def test_symlinks_are_resolved_inside_the_image_never_outside(unpacked, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    base = _layer([("dir", "usr", b""), ("dir", "usr/lib", b""),
                   ("symlink", "lib", "/usr/lib"),         # absolute, like /lib -> /usr/lib
                   ("symlink", "escape", str(outside))])    # points at a host directory
    top = _layer([("file", "lib/libx.so", "library"), ("file", "escape/planted", "evil")])
    root = unpacked([base, top])
    assert (root / "usr/lib/libx.so").read_text() == "library"
    assert list(outside.iterdir()) == []                    # nothing written on the host
    assert (root / str(outside).lstrip("/") / "planted").read_text() == "evil"


@pytest.mark.parametrize("name", ["../escape", "a/../../escape"])
def test_entries_climbing_out_are_refused(unpacked, name):
    with pytest.raises(ImageError, match="escapes the image"):
        unpacked([_layer([("file", name, "x")])])


def test_config_becomes_singularity_layout(unpacked):
    root = unpacked([_layer([("dir", "bin", b"")])], config={
        "Env": ["PATH=/opt/bin:/bin", "QUOTED=a \"b\" $c"], "Entrypoint": ["/bin/tool"],
        "Cmd": ["--flag"], "WorkingDir": "/work", "Labels": {"maintainer": "me"}})
    env = (root / ".singularity.d/env/10-docker2singularity.sh").read_text()
    assert 'export PATH="/opt/bin:/bin"' in env
    assert 'export QUOTED="${QUOTED:-"a \\"b\\" \\$c"}"' in env
    runscript = (root / ".singularity.d/runscript").read_text()
    assert "OCI_ENTRYPOINT='\"/bin/tool\"'" in runscript and 'cd "/work"' in runscript
    assert json.loads((root / ".singularity.d/labels.json").read_text()) == {"maintainer": "me"}
    for mount_point in ("proc", "sys", "dev", "tmp"):
        assert (root / mount_point).is_dir()


def test_owners_are_kept_for_root(unpacked):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("owned")
        info.uid, info.gid, info.size = 1234, 4321, 1
        tar.addfile(info, io.BytesIO(b"x"))
    root = unpacked([buffer.getvalue()])  # an uncompressed layer, too
    owner = os.stat(root / "owned")
    if has_host_root():
        assert (owner.st_uid, owner.st_gid) == (1234, 4321)
    else:
        assert owner.st_uid == os.geteuid()
