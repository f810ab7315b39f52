"""Building images: definition files → SIF or sandbox, conversions, failures that leave nothing.

Every build here is real: %post and %test run in instances of the image being
built, SIF files are made with mksquashfs; as root and (second pass) as an
ordinary user, whose %post runs as root of a fakeroot user namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from instancelib import (
    BuildProgress,
    Definition,
    DefinitionError,
    Image,
    ImageError,
    Instance,
    InstanceError,
    PermissionDenied,
    Unsupported,
    build_image,
)
from instancelib.build import remove_build_tree
from instancelib.image import sif
from instancelib.linux.userns import has_host_root
from tests.helpers import host_mounts, wait_for

WEB_DEF = """\
Bootstrap: busybox

%help
    A tiny web server.

%arguments
    VERSION=1.0

%labels
    Author instancelib-tests
    Version {{ VERSION }}

%setup
    echo "from setup" > "$APPTAINER_ROOTFS/setup-was-here"
    test "$SINGULARITY_ROOTFS" = "$APPTAINER_ROOTFS"

%files
    {payload} /opt/payload.txt
    {payload} /opt/dir/

%environment
    export GREETING=hello

%post
    mkdir -p /srv/www
    echo "<h1>built</h1>" > /srv/www/index.html
    echo "export BUILT_IN_POST=yes" >> "$APPTAINER_ENVIRONMENT"
    echo "post says hi"

%startscript
    echo "startscript $GREETING"
    exec sleep 1000

%runscript
    echo "run: $GREETING $BUILT_IN_POST $*"

%test
    test -f /srv/www/index.html
    echo "test passed"
"""


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".instancelib-build-")
            or p.name.endswith(".tmp")]


@pytest.fixture
def web_def(tmp_path: Path) -> Path:
    payload = tmp_path / "payload.txt"
    payload.write_text("payload from the host\n")
    path = tmp_path / "web.def"
    path.write_text(WEB_DEF.replace("{payload}", str(payload)))
    return path


@pytest.fixture
def built_sandboxes():
    """Sandboxes a test builds; an ordinary user's may hold files of subordinate IDs."""
    made: list[Path] = []
    yield made
    for path in made:
        remove_build_tree(path)


def test_build_a_sif_from_a_definition_file(web_def, tmp_path, start):
    events: list[BuildProgress] = []
    target = tmp_path / "web.sif"
    image = build_image(web_def, target, build_args={"VERSION": "2.5"}, progress=events.append)
    assert image.kind == "sif" and image.path == str(target)
    assert _leftovers(tmp_path) == []
    steps = [e.step for e in events if e.output is None]
    assert steps[0] == "bootstrap (busybox)"
    for step in ("%setup", "%post", "%test", "mksquashfs", "write the SIF", "done"):
        assert step in steps
    fractions = [e.fraction for e in events if e.step == "mksquashfs" and e.fraction is not None]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)  # mksquashfs's own bar
    outputs = [(e.step, e.output) for e in events if e.output is not None]
    assert ("%post", "post says hi") in outputs
    assert ("%test", "test passed") in outputs

    # The SIF holds the definition, the labels and the root filesystem, as Apptainer's do.
    parsed = image.sif
    assert parsed is not None
    kinds = [d.data_type for d in parsed.descriptors]
    assert kinds == [sif.DATA_DEFFILE, sif.DATA_LABELS, sif.DATA_GENERIC_JSON,
                     sif.DATA_PARTITION]
    deffile = parsed.read_object(parsed.descriptors[0]).decode()
    assert "Version 2.5" in deffile and "%post" in deffile
    assert parsed.descriptors[2].name == "inspect-metadata.json"
    assert parsed.primary_partition() is not None
    assert parsed.primary_partition().offset % 4096 == 0
    assert parsed.header.launch_script == sif.LAUNCH_SCRIPT
    labels = json.loads(parsed.read_object(parsed.descriptors[1]))
    assert labels["Author"] == "instancelib-tests" and labels["Version"] == "2.5"

    # The whole lifecycle works from it.
    instance = start(image, "web")
    wait_for(lambda: "startscript hello" in instance.stdout_path.read_text())
    assert instance.exec(["cat", "/setup-was-here", "/opt/payload.txt",
                          "/opt/dir/payload.txt"]).stdout == (
        "from setup\npayload from the host\npayload from the host\n")
    assert instance.exec(["cat", "/srv/www/index.html"]).stdout == "<h1>built</h1>\n"
    assert instance.run(["a", "b"]).stdout == "run: hello yes a b\n"
    assert instance.exec(["cat", "/.singularity.d/runscript.help"]).stdout.strip() == (
        "A tiny web server.")
    assert instance.exec(["test", "-e", "/.build-script"]).returncode == 1
    instance.stop()


def test_build_a_sandbox(web_def, tmp_path, start, built_sandboxes):
    target = tmp_path / "web-sandbox"
    built_sandboxes.append(target)
    image = build_image(web_def, target, sandbox=True)
    assert image.kind == "sandbox" and target.is_dir()
    meta = target / ".singularity.d"
    assert (meta / "env/90-environment.sh").read_text() == (
        "#!/bin/sh\n    export GREETING=hello\n")
    assert "export BUILT_IN_POST=yes" in (meta / "env/91-environment.sh").read_text()
    assert (meta / "runscript").read_text().startswith("#!/bin/sh\n")
    assert os.access(meta / "startscript", os.X_OK) and os.access(meta / "test", os.X_OK)
    assert (meta / "Singularity").read_text().startswith("Bootstrap: busybox")
    labels = json.loads((meta / "labels.json").read_text())
    assert labels["Version"] == "1.0"  # the %arguments default
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "busybox"
    assert labels["org.label-schema.usage"] == "/.singularity.d/runscript.help"
    assert (target / "tmp").stat().st_mode & 0o1777 == 0o1777
    assert _leftovers(tmp_path) == []
    instance = start(image, "sandboxed", run=True, args=["x"])
    wait_for(lambda: "run: hello yes x" in instance.stdout_path.read_text())
    instance.stop()


def test_definition_objects_and_stages(tmp_path):
    stages = Definition.parse_stages(
        "Bootstrap: busybox\nStage: one\n%post\n    mkdir -p /out\n"
        "    echo artifact > /out/artifact\n    echo junk > /junk\n"
        "\nBootstrap: busybox\nStage: two\n%files from one\n    /out/artifact /artifact\n"
        "%runscript\n    cat /artifact\n")
    target = tmp_path / "multi.sif"
    image = build_image(stages, target)
    registry_dir = tmp_path / "reg"
    from instancelib import InstanceRegistry  # noqa: PLC0415

    with Instance.start(image, "multi", registry=InstanceRegistry(registry_dir)) as instance:
        assert instance.run([]).stdout == "artifact\n"
        assert instance.exec(["test", "-e", "/junk"]).returncode == 1
    # The last stage's definition is the image's.
    assert "Stage: two" in image.inspect().deffile


def test_files_from_an_unknown_stage_is_an_error(tmp_path):
    definition = Definition.parse("Bootstrap: busybox\n%files from nowhere\n    /a /b\n")
    with pytest.raises(DefinitionError, match="from STAGE"):
        build_image(definition, tmp_path / "x.sif")
    assert not (tmp_path / "x.sif").exists() and _leftovers(tmp_path) == []


def test_build_arguments(tmp_path):
    text = "Bootstrap: busybox\n%labels\n    Who {{ WHO }}\n"
    path = tmp_path / "args.def"
    path.write_text(text)
    with pytest.raises(DefinitionError, match="WHO"):
        build_image(path, tmp_path / "args.sif")
    image = build_image(path, tmp_path / "args.sif", build_args={"WHO": "me"})
    assert image.inspect().labels["Who"] == "me"


@pytest.mark.parametrize(("section", "body", "what"), [
    ("post", "echo before-failure\nexit 3", "%post failed with exit status 3"),
    ("setup", "exit 4", "%setup failed with exit status 4"),
    ("pre", "exit 5", "%pre failed with exit status 5"),
    ("test", "false", "%test failed with exit status 1"),
])
def test_a_failed_build_leaves_nothing(tmp_path, section, body, what):
    mounts_before = host_mounts()
    path = tmp_path / "fail.def"
    path.write_text(f"Bootstrap: busybox\n%{section}\n    {body}\n")
    for target, sandbox in ((tmp_path / "fail.sif", False), (tmp_path / "fail-dir", True)):
        with pytest.raises(InstanceError, match=what) as caught:
            build_image(path, target, sandbox=sandbox)
        assert not target.exists()
        if section == "post":
            assert "before-failure" in caught.value.detail
    assert _leftovers(tmp_path) == []
    assert host_mounts() == mounts_before


def test_pre_runs_on_the_host_before_the_bootstrap(tmp_path):
    mark = tmp_path / "pre-ran"
    definition = Definition.parse(
        f"Bootstrap: busybox\n%pre\n    echo \"$APPTAINER_ROOTFS\" > {mark}\n"
        f"%setup\n    test -s {mark} && touch \"$APPTAINER_ROOTFS/after-pre\"\n")
    target = tmp_path / "pre"
    build_image(definition, target, sandbox=True)
    try:
        assert mark.read_text() == "\n"  # no root filesystem yet
        assert (target / "after-pre").exists()
    finally:
        remove_build_tree(target)


def test_notest_skips_the_test_section(tmp_path):
    path = tmp_path / "t.def"
    path.write_text("Bootstrap: busybox\n%test\n    exit 1\n")
    image = build_image(path, tmp_path / "t.sif", notest=True)
    assert image.inspect().test == "#!/bin/sh\n\n    exit 1"


def test_an_existing_target_needs_force(tmp_path):
    definition = Definition.parse("Bootstrap: busybox\n%labels\n    N 1\n")
    target = tmp_path / "exists.sif"
    target.write_text("precious")
    with pytest.raises(ImageError, match="exists"):
        build_image(definition, target)
    assert target.read_text() == "precious"
    assert build_image(definition, target, force=True).kind == "sif"
    directory = tmp_path / "exists-dir"
    directory.mkdir()
    (directory / "old").write_text("x")
    image = build_image(definition, directory, sandbox=True, force=True)
    assert image.kind == "sandbox" and not (directory / "old").exists()
    remove_build_tree(directory)


@pytest.mark.parametrize(("agent", "missing"), [
    ("docker", "registry"), ("library", "Sylabs library"), ("oras", "registry"),
    ("shub", "Singularity Hub"), ("yum", "yum"), ("zypper", "zypper"), ("arch", "pacstrap"),
])
def test_agents_this_machine_cannot_serve_are_unsupported(tmp_path, agent, missing):
    definition = Definition.parse(f"Bootstrap: {agent}\nFrom: something\n")
    with pytest.raises(Unsupported, match=missing):
        build_image(definition, tmp_path / "x.sif")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_target_directory(tmp_path):
    definition = Definition.parse("Bootstrap: busybox\n")
    with pytest.raises(ImageError, match="build target's directory"):
        build_image(definition, "/proc/instancelib-test.sif")  # no new entries, even for root
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if not has_host_root():  # root may write anywhere
        with pytest.raises(PermissionDenied, match="build target's directory"):
            build_image(definition, locked / "x.sif")
    assert list(locked.iterdir()) == []


def test_a_missing_files_source_is_an_error(tmp_path):
    definition = Definition.parse("Bootstrap: busybox\n%files\n    /no/such/file /x\n")
    with pytest.raises(ImageError, match="/no/such/file"):
        build_image(definition, tmp_path / "x.sif")
    assert list(tmp_path.iterdir()) == []


def test_files_globs(tmp_path):
    for name in ("a.conf", "b.conf", "c.txt"):
        (tmp_path / name).write_text(name)
    definition = Definition.parse(f"Bootstrap: busybox\n%files\n    {tmp_path}/*.conf /etc/conf/\n")
    target = tmp_path / "glob"
    build_image(definition, target, sandbox=True)
    try:
        assert sorted(os.listdir(target / "etc/conf")) == ["a.conf", "b.conf"]
    finally:
        remove_build_tree(target)


def test_localimage_and_conversions(sif_path, tmp_path, start, built_sandboxes):
    # A SIF becomes a sandbox, which becomes a SIF again, with the same content.
    sandbox = tmp_path / "converted"
    built_sandboxes.append(sandbox)
    converted = build_image(sif_path, sandbox, sandbox=True)
    assert converted.kind == "sandbox"
    assert (sandbox / ".singularity.d/startscript").read_text().startswith("#!/bin/sh")
    back = build_image(str(sandbox), tmp_path / "back.sif")
    assert back.kind == "sif"
    instance = start(back, "back")
    wait_for(lambda: "started-from-image" in instance.stdout_path.read_text())
    instance.stop()
    # Bootstrap: localimage adds to an image.
    definition = Definition.parse(f"Bootstrap: localimage\nFrom: {sif_path}\n"
                                  "%post\n    echo added > /added\n")
    layered = build_image(definition, tmp_path / "layered.sif")
    instance = start(layered, "layered")
    assert instance.exec(["cat", "/added"]).stdout == "added\n"
    assert instance.run(["z"]).stdout == "runscript z\n"  # the base's runscript stays
    instance.stop()


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci-layout"])
def test_oci_images_become_sifs(podman_archives, tmp_path, start, kind):
    image = build_image(podman_archives[kind], tmp_path / f"{kind}.sif")
    assert image.kind == "sif"
    instance = start(image, "oci", run=True, args=["given"])
    wait_for(lambda: "entry given" in instance.stdout_path.read_text())
    assert instance.exec(["sh", "-c", "echo $GREETING"]).stdout == "hello\n"
    instance.stop()


def test_oci_bootstrap_agents(podman_archives, tmp_path, start):
    agent_for = {"docker-archive": "docker-archive", "oci-archive": "oci-archive",
                 "oci-layout": "oci"}
    for kind, agent in agent_for.items():
        definition = Definition.parse(f"Bootstrap: {agent}\nFrom: {podman_archives[kind]}\n"
                                      "%post\n    echo $GREETING > /greeting\n")
        image = build_image(definition, tmp_path / f"{agent}.sif")
        instance = start(image, f"agent-{agent}")
        assert instance.exec(["cat", "/greeting"]).stdout == "hello\n"
        assert instance.run([]).stdout == "entry default-arg\n"
        instance.stop()
    wrong = Definition.parse(f"Bootstrap: oci-archive\nFrom: {podman_archives['docker-archive']}\n")
    with pytest.raises(ImageError):
        build_image(wrong, tmp_path / "wrong.sif")
    not_oci = Definition.parse("Bootstrap: docker-archive\nFrom: /etc/hostname\n")
    with pytest.raises(ImageError):
        build_image(not_oci, tmp_path / "wrong.sif")
    assert not (tmp_path / "wrong.sif").exists()


def test_post_owns_files_as_root_inside(tmp_path):
    """Owners set in %post survive into the SIF, also for an ordinary user's build
    (fakeroot with subordinate IDs; mksquashfs runs in the same user namespace)."""
    definition = Definition.parse(
        "Bootstrap: busybox\n%post\n    mkdir /data\n    echo s > /data/secret\n"
        "    chown 1000:2000 /data/secret\n    chmod 600 /data/secret\n    chown 1000 /data\n")
    image = build_image(definition, tmp_path / "owners.sif")
    offset = image.sif.primary_partition().offset
    listing = subprocess.run(["unsquashfs", "-lln", "-o", str(offset), str(image.path)],
                             capture_output=True, text=True, check=True).stdout
    lines = {line.split()[-1]: line.split() for line in listing.splitlines()
             if "squashfs-root/" in line}
    assert lines["squashfs-root/data/secret"][:2] == ["-rw-------", "1000/2000"]
    assert lines["squashfs-root/data"][1] == "1000/0"
    assert lines["squashfs-root/bin"][1] == "0/0"


def test_apps_are_installed(tmp_path):
    text = ("Bootstrap: busybox\n"
            "%appinstall hello\n    echo installed > here\n"
            "%apprun hello\n    echo hello app\n"
            "%applabels hello\n    Kind greeting\n"
            "%appenv hello\n    export APPVAR=1\n"
            "%apphelp hello\n    Says hello.\n")
    target = tmp_path / "apps"
    build_image(Definition.parse(text), target, sandbox=True)
    try:
        base = target / "scif/apps/hello"
        assert (base / "here").read_text() == "installed\n"
        metadata = Image(target).inspect()
        app = metadata.apps["hello"]
        assert app.labels == {"Kind": "greeting"}
        assert app.runscript == "#!/bin/sh\n\n    echo hello app"
        assert app.helpfile == "    Says hello."
        assert app.environment == {
            "/scif/apps/hello/scif/env/90-environment.sh": "#!/bin/sh\n    export APPVAR=1"}
    finally:
        remove_build_tree(target)


def test_debootstrap(tmp_path, start):
    definition = Definition.parse(
        "Bootstrap: debootstrap\nOSVersion: bookworm\nMirrorURL: http://deb.debian.org/debian\n"
        "Include: netbase\n%post\n    echo built > /built\n"
        "%runscript\n    cat /etc/debian_version\n")
    if not has_host_root():
        with pytest.raises(Unsupported, match="needs root"):
            build_image(definition, tmp_path / "debian.sif")
        assert list(tmp_path.iterdir()) == []
        return
    assert shutil.which("debootstrap", path="/usr/sbin:/usr/bin"), "scripts/setup installs it"
    image = build_image(definition, tmp_path / "debian.sif")
    instance = start(image, "debian")
    assert instance.run([]).stdout.startswith("12.")  # bookworm, as OSVersion asked
    assert instance.exec(["cat", "/built"]).stdout == "built\n"
    assert instance.exec(["test", "-f", "/etc/protocols"]).returncode == 0  # Include: netbase
    assert instance.exec(["dpkg-query", "-W", "netbase"]).returncode == 0
    instance.stop()
