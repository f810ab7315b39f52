"""Run as ``singularity``: its layout, its words, foreground commands on images, the launcher."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from instancelib import Image, InstanceRegistry, NameConflict, __version__
from instancelib.cli.alias import MARK, write_launcher
from instancelib.foreground import prune_stale

USER = pwd.getpwuid(os.geteuid()).pw_name
HOST = socket.gethostname()


@pytest.fixture
def configdir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "config"
    monkeypatch.setenv("SINGULARITY_CONFIGDIR", str(path))
    monkeypatch.setenv("APPTAINER_CONFIGDIR", str(tmp_path / "apptainer"))
    yield path
    for layout in ("singularity", "apptainer"):
        for instance in InstanceRegistry(layout=layout).list():
            instance.stop(force=True)


@pytest.fixture
def singularity(tmp_path, configdir):
    """``singularity ARGS``: the launcher ``instancelib alias`` writes, on a test PATH."""
    prune_stale()  # what an earlier, killed run left: the tests compare with what is there
    bindir = tmp_path / "bin"
    bindir.mkdir()
    write_launcher("singularity", bindir)
    write_launcher("apptainer", bindir)

    def run(*args: str, name: str = "singularity", **kwargs) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("timeout", 60)
        return subprocess.run([str(bindir / name), *args], capture_output=True, text=True,
                              check=False, **kwargs)

    run.bindir = bindir  # type: ignore[attr-defined]
    return run


def _foreground_dirs() -> set[str]:
    prefix = f"instancelib-{os.geteuid()}-fg-"
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(prefix)}


def test_the_launcher_is_singularity_and_apptainer(singularity):
    version = singularity("--version")
    assert version.returncode == 0 and version.stderr == ""
    assert version.stdout == f"singularity version 3.11.5+instancelib.{__version__}\n"
    assert singularity("version").stdout == f"3.11.5+instancelib.{__version__}\n"
    assert singularity("--version", name="apptainer").stdout.startswith("apptainer version 1.")
    usage = singularity("instance", "frobnicate")
    assert usage.returncode == 255 and usage.stderr.startswith("FATAL:   ")
    assert "singularity instance --help" in usage.stderr and "Traceback" not in usage.stderr


def test_the_launcher_is_never_written_over_a_real_singularity(tmp_path):
    real = tmp_path / "singularity"
    real.write_text("#!/bin/sh\necho the real one\n")
    with pytest.raises(NameConflict, match="not an instancelib launcher"):
        write_launcher("singularity", tmp_path)
    assert real.read_text() == "#!/bin/sh\necho the real one\n"
    write_launcher("singularity", tmp_path, force=True)
    assert MARK in real.read_text()
    write_launcher("singularity", tmp_path)  # its own launcher: replaced without --force
    assert os.access(real, os.X_OK)


def test_a_plain_link_to_the_command_behaves_the_same(tmp_path, configdir):
    # What pip's console script is (a script that calls instancelib.cli:main), linked
    # under Singularity's name: the name it runs as is what counts.
    script = tmp_path / "instancelib"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
                      "from instancelib.cli import main\nraise SystemExit(main())\n")
    script.chmod(0o755)
    link = tmp_path / "link" / "singularity"
    link.parent.mkdir()
    link.symlink_to(script)
    result = subprocess.run([str(link), "--version"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.stdout.startswith("singularity version 3.11.5+instancelib.")
    listed = subprocess.run([str(link), "instance", "list", "--json"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert listed.returncode == 0 and '"instances": []' in listed.stdout


def test_logs_and_list_in_singularitys_layout(singularity, configdir, make_image):
    image = make_image(startscript="#!/bin/sh\necho hello-out\necho hello-err >&2\n"
                                   "exec sleep 1000\n")
    started = singularity("instance", "start", image.path, "web")
    assert started.returncode == 0, started.stderr
    logs = configdir / "instances" / "logs" / HOST / USER
    deadline = time.monotonic() + 10
    while (not (logs / "web.out").exists() or b"hello-out" not in (logs / "web.out").read_bytes()
           ) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (logs / "web.out").read_text() == "hello-out\n"
    assert (logs / "web.err").read_text().startswith("hello-err\n")
    listed = singularity("instance", "list", "--json")
    assert f'"logOutPath": "{logs}/web.out"' in listed.stdout
    # A second start of the name: Singularity's words, exit 255, the first one untouched.
    again = singularity("instance", "start", image.path, "web")
    assert again.returncode == 255
    assert again.stderr.startswith("FATAL:   instance web already exists")
    assert len(again.stderr.splitlines()) == 1
    registry = InstanceRegistry(layout="singularity")
    (web,) = registry.list()
    assert web.name == "web" and web.stdout_path == logs / "web.out"
    # Neither instancelib's own registry nor Apptainer's sees it.
    assert singularity("instance", "list", "--json", name="apptainer").stdout == (
        '{\n\t"instances": []\n}\n')
    stopped = singularity("instance", "stop", "--all")
    assert stopped.returncode == 0
    assert not web.is_running()
    assert stopped.stderr.startswith(f"INFO:    Stopping web instance of {image.path} (PID=")
    assert singularity("instance", "stop", "--all").stderr == "FATAL:   no instance found\n"


def test_the_layout_keeps_the_registrys_symlink_rule(tmp_path, monkeypatch):
    config = tmp_path / "config"
    (config / "instances").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (config / "instances" / "logs").symlink_to(elsewhere)
    monkeypatch.setenv("SINGULARITY_CONFIGDIR", str(config))
    registry = InstanceRegistry(layout="singularity")
    with pytest.raises(Exception, match="symlink"):
        registry.ensure_dirs()
    assert list(elsewhere.iterdir()) == []


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown registry layout 'docker'"):
        InstanceRegistry(layout="docker")


def test_exec_on_an_image_in_the_foreground(singularity, make_image, tmp_path):
    image = make_image()
    before = _foreground_dirs()
    here = tmp_path / "work"
    here.mkdir()
    result = singularity("exec", "--env", "GREETING=hi", image.path, "sh", "-c",
                         'echo "$GREETING from $PWD"; echo oops >&2; exit 7', cwd=here)
    # The command's status is ours; the caller's directory (bound from the host's /tmp).
    assert result.returncode == 7, result.stderr
    assert result.stdout == f"hi from {here}\n" and result.stderr == "oops\n"
    assert singularity("exec", "--pwd", "/etc", image.path, "pwd").stdout == "/etc\n"
    assert singularity("run", image.path, "-c", "echo ran $0").stdout == "ran /bin/sh\n"
    assert singularity("test", image.path).returncode == 0
    assert singularity("exec", image.path).returncode == 255
    # Nothing is left: no registry, no record listed anywhere, no instance process.
    assert _foreground_dirs() == before
    assert singularity("instance", "list", "--json").stdout == '{\n\t"instances": []\n}\n'


def test_options_of_instance_start_apply_to_a_foreground_command(singularity, make_image,
                                                                 tmp_path):
    image = make_image()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data").write_text("bound\n")
    result = singularity("exec", "-B", f"{shared}:/mnt/data", "--writable-tmpfs", "--contain",
                         "--hostname", "fg", "--cleanenv", image.path, "sh", "-c",
                         "cat /mnt/data/data; hostname; touch /new && echo writable; "
                         "echo ${HOSTVAR:-clean}", env={**os.environ, "HOSTVAR": "leaked"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "bound\nfg\nwritable\nclean\n"


def test_a_signal_goes_to_the_command_and_its_status_is_ours(singularity, make_image):
    image = make_image()
    before = _foreground_dirs()
    process = subprocess.Popen([str(singularity.bindir / "singularity"), "exec", image.path,
                                "sh", "-c", "trap 'exit 42' TERM; echo up; "
                                "while :; do sleep 0.05; done"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "up\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 42
        assert _foreground_dirs() == before
    finally:
        process.kill()
        process.wait()
        prune_stale()


def test_a_killed_foreground_command_leaves_nothing(singularity, make_image):
    image = make_image()
    before = _foreground_dirs()
    process = subprocess.Popen([str(singularity.bindir / "singularity"), "exec", image.path,
                                "sh", "-c", "echo $$; exec sleep 1000"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip().isdigit()
        (new,) = _foreground_dirs() - before
        registry = InstanceRegistry(Path(tempfile.gettempdir()) / new)
        (instance,) = registry.list()
        process.kill()  # SIGKILL: no clean-up of its own
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while instance.is_running() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not instance.is_running(), "PID 1 outlived the command that started it"
        registry.store.close()
        # The next foreground command (here: its clean-up alone) removes the rest.
        assert Path(tempfile.gettempdir(), new).as_posix() in prune_stale()
        assert _foreground_dirs() == before
    finally:
        process.kill()
        process.wait()
        prune_stale()


def test_exec_into_an_instance_like_singularity(singularity, make_image, tmp_path):
    image = make_image()
    assert singularity("instance", "start", image.path, "svc").returncode == 0
    here = tmp_path / "here"
    here.mkdir()
    environ = {**os.environ, "SINGULARITYENV_FROM_CALLER": "at-exec",
               "APPTAINERENV_BOTH": "apptainer", "SINGULARITYENV_BOTH": "singularity"}
    result = singularity("exec", "--bind", "/tmp", "instance://svc", "sh", "-c",
                         "echo $FROM_CALLER $BOTH; pwd", cwd=here, env=environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"at-exec apptainer\n{here}\n"
    assert result.stderr == ("WARNING: --bind: not applied to a running instance "
                             "(set at its start)\n")
    # A directory the instance cannot see: its own (the start's) instead.
    assert not (Path(image.path) / "etc" / "apt").exists() and Path("/etc/apt").is_dir()
    elsewhere = singularity("exec", "instance://svc", "pwd", cwd="/etc/apt")
    assert elsewhere.returncode == 0 and elsewhere.stdout != "/etc/apt\n"
    missing = singularity("exec", "instance://nope", "true")
    assert missing.returncode == 255
    assert missing.stderr == "FATAL:   no instance found with name nope\n"


def test_shell_has_singularitys_prompt_and_no_rc_files(singularity, make_image):
    image = make_image()
    result = singularity("shell", image.path, input='echo "[$PS1]"; exit 3\n')
    assert result.returncode == 3
    assert result.stdout == "[Singularity> ]\n"
    assert singularity("shell", image.path, name="apptainer",
                       input='echo "[$PS1]"\n').stdout == "[Apptainer> ]\n"


def test_image_exec_and_run_in_the_api(make_image, tmp_path):
    image = make_image()
    prune_stale()
    before = _foreground_dirs()
    result = Image(image.path).exec(["sh", "-c", "echo $X; cat; exit 2"], env={"X": "api"},
                                    input="fed\n")
    assert (result.returncode, result.stdout) == (2, "api\nfed\n")
    assert Image(image.path).run(["-c", "echo $1", "x", "arg"]).stdout == "arg\n"
    assert Image(image.path).exec(["hostname"], hostname="box").stdout == "box\n"
    assert Image(image.path).test().returncode == 0
    with pytest.raises(ValueError, match="not an option of a foreground command: ready"):
        Image(image.path).exec(["true"], ready="tcp:80")
    assert _foreground_dirs() == before


def test_scif_apps_with_app(singularity, tmp_path):
    definition = tmp_path / "apps.def"
    definition.write_text(
        "Bootstrap: busybox\n"
        "%apprun hello\n    echo \"app $SCIF_APPNAME says $GREET to $1\"\n"
        "%appenv hello\n    export GREET=hi\n"
        "%apptest hello\n    test \"$SCIF_APPNAME\" = hello && exit 3\n"
        "%appinstall hello\n    mkdir -p bin && printf '#!/bin/sh\\necho tool\\n' > bin/tool"
        " && chmod +x bin/tool\n")
    built = singularity("build", "--sandbox", str(tmp_path / "apps"), str(definition))
    assert built.returncode == 0, built.stderr
    image = str(tmp_path / "apps")
    assert singularity("run", "--app", "hello", image, "you").stdout == "app hello says hi to you\n"
    assert singularity("exec", "--app", "hello", image, "sh", "-c",
                       "echo $GREET; tool").stdout == "hi\ntool\n"
    assert singularity("test", "--app", "hello", image).returncode == 3
    missing = singularity("run", "--app", "nope", image)
    assert missing.returncode == 255 and "no app nope in the image" in missing.stderr


def test_routine_notes_only_with_verbose(singularity, sif_path):
    quiet = singularity("instance", "start", str(sif_path), "plain")
    assert quiet.returncode == 0, quiet.stderr
    assert "squashfs" not in quiet.stderr and "cache" not in quiet.stderr
    assert quiet.stderr == "INFO:    instance started successfully\n"
    assert singularity("-q", "instance", "stop", "plain").stderr == ""
    verbose = singularity("-v", "instance", "start", str(sif_path), "noted")
    assert verbose.returncode == 0, verbose.stderr
    # How the image was mounted: a loop device (root), squashfuse or the cache (a user).
    assert "VERBOSE: " in verbose.stderr
    assert any(word in verbose.stderr for word in ("mounted through /dev/loop",
                                                   "squashfuse", "cache"))
    assert singularity("instance", "stop", "noted").returncode == 0
