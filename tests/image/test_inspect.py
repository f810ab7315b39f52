"""``Image.inspect()`` for every image kind, and the ``build``/``inspect`` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instancelib import ImageError, ImageMetadata
from instancelib.build import remove_build_tree
from instancelib.image import Image, sif

DEF = """Bootstrap: busybox

%help
    Serves nothing & prints <things>.

%labels
    Author tests
    Version {{ V }}

%environment
    export COLOUR=blue

%runscript
    echo run

%startscript
    exec sleep 1000

%test
    true
"""


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "instancelib", *args], capture_output=True,
                          text=True, timeout=120, check=False, **kwargs)


@pytest.fixture
def deffile(tmp_path: Path) -> Path:
    path = tmp_path / "i.def"
    path.write_text(DEF)
    return path


def test_inspect_a_sandbox(busybox_rootfs):
    metadata = Image(busybox_rootfs).inspect()
    assert metadata.startscript.startswith("#!/bin/sh\necho started-from-image")
    assert metadata.runscript == '#!/bin/sh\necho "runscript $*"'
    assert metadata.environment == {
        "/.singularity.d/env/90-environment.sh": "export FROM_IMAGE=yes"}
    assert metadata.deffile is None and metadata.apps == {}


def test_inspect_a_sif_without_metadata_object_reads_its_squashfs(sif_path, squashfs_path,
                                                                   busybox_rootfs):
    from_files = Image(busybox_rootfs).inspect()
    metadata = Image(sif_path).inspect()  # objects: Def.FILE and the partition only
    assert metadata.deffile == "Bootstrap: busybox"
    assert metadata.runscript == from_files.runscript
    assert metadata.environment == from_files.environment
    assert Image(squashfs_path).inspect() == from_files


def test_inspect_an_oci_archive(podman_archives):
    for path in podman_archives.values():
        metadata = Image(path).inspect()
        assert 'OCI_ENTRYPOINT=\'"/bin/echo" "entry"\'' in metadata.runscript
        assert 'cd "/etc"' in metadata.runscript
        env = metadata.environment["/.singularity.d/env/10-docker2singularity.sh"]
        assert 'export GREETING="${GREETING:-"hello"}"' in env


def test_malformed_metadata_object_is_an_image_error(tmp_path, squashfs_path):
    for data in (b"{not json", b'{"data": 3}', b'{"data": {"attributes": {"labels": [1]}}}'):
        target = tmp_path / "bad.sif"
        sif.write_sif(target, [
            sif.SIFObject(data_type=sif.DATA_GENERIC_JSON, data=data,
                          name="inspect-metadata.json"),
            sif.SIFObject(data_type=sif.DATA_PARTITION, data=squashfs_path,
                          fs_type=sif.FS_SQUASHFS, part_type=sif.PART_PRIMARY_SYSTEM,
                          arch=sif.host_arch(), alignment=4096),
        ])
        with pytest.raises(ImageError, match="inspect"):
            Image(target).inspect()


def test_metadata_round_trips_through_apptainers_json():
    metadata = ImageMetadata(labels={"a": "1"}, runscript="#!/bin/sh", deffile="Bootstrap: x",
                             environment={"/.singularity.d/env/90-environment.sh": "x=1"})
    document = metadata.to_dict()
    assert document == {"data": {"attributes": {
        "environment": {"/.singularity.d/env/90-environment.sh": "x=1"},
        "labels": {"a": "1"}, "runscript": "#!/bin/sh", "deffile": "Bootstrap: x"}},
        "type": "container"}
    assert ImageMetadata.from_dict(json.loads(json.dumps(document))) == metadata


def test_cli_build_and_inspect(deffile, tmp_path):
    target = tmp_path / "i.sif"
    built = _cli("build", "--build-arg", "V=7", str(target), str(deffile))
    assert built.returncode == 0, built.stderr
    assert "INFO:    starting build..." in built.stderr
    assert "INFO:    build complete: " in built.stderr
    assert target.exists()

    labels = _cli("inspect", str(target))
    assert labels.returncode == 0, labels.stderr
    lines = labels.stdout.splitlines()
    assert lines[:2] == ["Author: tests", "Version: 7"]
    keys = [line.partition(": ")[0] for line in lines]
    assert keys == sorted(keys)  # sorted by key, as Apptainer prints them

    shown = _cli("inspect", "--deffile", str(target))
    assert shown.stdout.startswith("Bootstrap: busybox\n") and "Version 7" in shown.stdout
    assert _cli("inspect", "-r", str(target)).stdout == "#!/bin/sh\n\n    echo run\n"
    assert _cli("inspect", "-s", str(target)).stdout == "#!/bin/sh\n\n    exec sleep 1000\n"
    assert _cli("inspect", "-t", str(target)).stdout == "#!/bin/sh\n\n    true\n"
    assert _cli("inspect", "-H", str(target)).stdout == "    Serves nothing & prints <things>.\n"
    env = _cli("inspect", "-e", str(target)).stdout
    assert ("=== /.singularity.d/env/90-environment.sh ===\n"
            "#!/bin/sh\n    export COLOUR=blue\n\n") in env

    as_json = _cli("inspect", "--json", "-l", "-H", str(target))
    document = json.loads(as_json.stdout)
    assert document["type"] == "container"
    assert set(document["data"]["attributes"]) == {"labels", "helpfile"}
    assert "\\u0026 prints \\u003cthings\\u003e" in as_json.stdout  # Go's escaping
    everything = json.loads(_cli("inspect", "--all", str(target)).stdout)
    assert {"labels", "deffile", "runscript", "startscript", "test", "helpfile",
            "environment"} <= set(everything["data"]["attributes"])


def test_cli_build_errors(deffile, tmp_path):
    missing_arg = _cli("build", str(tmp_path / "x.sif"), str(deffile))
    assert missing_arg.returncode == 255
    assert missing_arg.stderr.splitlines()[-1].startswith("FATAL:   line 8: build argument 'V'")
    bad_arg = _cli("build", "--build-arg", "novalue", str(tmp_path / "x.sif"), str(deffile))
    assert bad_arg.returncode == 255 and "NAME=VALUE" in bad_arg.stderr
    unsupported = tmp_path / "docker.def"
    unsupported.write_text("Bootstrap: docker\nFrom: alpine\n")
    refused = _cli("build", str(tmp_path / "x.sif"), str(unsupported))
    assert refused.returncode == 255 and "registry" in refused.stderr
    assert sorted(os.listdir(tmp_path)) == ["docker.def", "i.def"]


def test_cli_build_sandbox_and_convert(deffile, tmp_path):
    sandbox = tmp_path / "box"
    try:
        built = _cli("build", "--sandbox", "--notest", "--build-arg", "V=1", str(sandbox),
                     str(deffile))
        assert built.returncode == 0, built.stderr
        assert (sandbox / ".singularity.d/labels.json").exists()
        converted = _cli("build", str(tmp_path / "from-box.sif"), str(sandbox))
        assert converted.returncode == 0, converted.stderr
        assert Image(tmp_path / "from-box.sif").inspect().labels["Version"] == "1"
        again = _cli("build", str(tmp_path / "from-box.sif"), str(sandbox))
        assert again.returncode == 255 and "exists" in again.stderr
        forced = _cli("build", "--force", str(tmp_path / "from-box.sif"), str(sandbox))
        assert forced.returncode == 0, forced.stderr
    finally:
        remove_build_tree(sandbox)


def test_cli_inspect_apps(tmp_path):
    path = tmp_path / "apps.def"
    path.write_text("Bootstrap: busybox\n%apprun one\necho one\n%apprun two\necho two\n"
                    "%applabels two\n    Kind second\n")
    target = tmp_path / "apps.sif"
    assert _cli("build", str(target), str(path)).returncode == 0
    assert _cli("inspect", "--list-apps", str(target)).stdout == "one\ntwo\n"
    assert _cli("inspect", "--app", "two", str(target)).stdout == "Kind: second\n"
    assert _cli("inspect", "--app", "two", "-r", str(target)).stdout == "#!/bin/sh\n\necho two\n"
    missing = _cli("inspect", "--app", "three", str(target))
    assert missing.returncode == 255 and "no app 'three'" in missing.stderr
