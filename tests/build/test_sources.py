"""What a build is given as its source: registries refused clearly, busybox's MirrorURL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from instancelib import Image, ImageError, Unsupported, build_image
from instancelib.build.busybox import find_static_busybox


@pytest.mark.parametrize("source", ["docker://alpine", "library://alpine:3", "oras://x/y:1"])
def test_a_registry_source_is_refused_as_bootstrap_docker_is(tmp_path, source):
    with pytest.raises(Unsupported, match="registries are not supported; save the image "
                                          "locally") as raised:
        build_image(source, tmp_path / "out.sif")
    assert source in str(raised.value)
    assert list(tmp_path.iterdir()) == []
    # The CLI's one line says the same (not "image not found: ./docker:/alpine").
    result = subprocess.run([sys.executable, "-m", "instancelib", "build",
                             str(tmp_path / "out.sif"), source], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 255
    assert "registries are not supported" in result.stderr.splitlines()[-1]
    definition = tmp_path / "docker.def"
    definition.write_text(f"Bootstrap: {source.split(':')[0]}\nFrom: alpine\n")
    with pytest.raises(Unsupported, match="registries are not supported"):
        build_image(definition, tmp_path / "out.sif")


def test_busybox_mirror_url_a_local_file_is_used(tmp_path):
    definition = tmp_path / "bb.def"
    definition.write_text(f"Bootstrap: busybox\nMirrorURL: file://{find_static_busybox()}\n"
                          "%post\n    echo built > /marker\n")
    build_image(definition, tmp_path / "box", sandbox=True)
    assert (tmp_path / "box" / "marker").read_text() == "built\n"
    assert Image(tmp_path / "box").exec(["cat", "/marker"]).stdout == "built\n"


def test_busybox_mirror_url_a_download_is_refused(tmp_path):
    definition = tmp_path / "bb.def"
    definition.write_text("Bootstrap: busybox\n"
                          "MirrorURL: https://www.busybox.net/downloads/binaries/busybox\n")
    with pytest.raises(Unsupported, match="downloading is not supported here"):
        build_image(definition, tmp_path / "box", sandbox=True)
    definition.write_text("Bootstrap: busybox\nMirrorURL: /no/such/busybox\n")
    with pytest.raises(ImageError, match="not an executable file"):
        build_image(definition, tmp_path / "box", sandbox=True)
    assert not (tmp_path / "box").exists()
