"""Definition files: header, sections, files, apps, stages, build arguments, errors."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instancelib import DefinitionError
from instancelib.image.deffile import Definition, FileCopy, Script

FULL = """\
# A comment before the header
Bootstrap: busybox   # trailing comment
From: whatever
OSVersion: bookworm
MirrorURL: http://deb.debian.org/debian
Include: a \\
  b \\
  c
OtherURL1: http://example.org/one

%help
    Help text.

%setup
    touch $APPTAINER_ROOTFS/setup-was-here

%files
    /etc/hostname /opt/hostname
    "/tmp/with space" "/opt/with space"
    # a comment line
    /etc/os-release

%labels
    Maintainer Jane Doe
    Version 1.0

%environment
    export A=1

%post -c /bin/bash
    echo post

%runscript
#!/bin/bash
    echo "run $@"

%startscript
    exec sleep 1000

%test
    true

%post
    echo second-post

%appinstall tool
    make install
%apprun tool
    exec tool "$@"
%apphelp other
    Other app.
"""


def test_header_keywords_comments_and_continuations():
    d = Definition.parse(FULL)
    assert d.header == {
        "bootstrap": "busybox", "from": "whatever", "osversion": "bookworm",
        "mirrorurl": "http://deb.debian.org/debian", "include": "a b c",
        "otherurl1": "http://example.org/one",
    }
    assert d.bootstrap == "busybox"


def test_sections_keep_their_bodies_and_arguments():
    d = Definition.parse(FULL)
    assert d.section("help") == Script("", "    Help text.\n\n")
    assert d.section("post").args == "-c /bin/bash"
    assert d.section("post").script == "    echo post\n\n    echo second-post\n\n"
    assert d.section("runscript").script.startswith("#!/bin/bash\n")
    assert d.section("startscript").script == "    exec sleep 1000\n\n"
    assert d.section("pre") == Script()


def test_files_labels_and_apps():
    d = Definition.parse(FULL)
    assert d.files == (("", (FileCopy("/etc/hostname", "/opt/hostname"),
                             FileCopy("/tmp/with space", "/opt/with space"),
                             FileCopy("/etc/os-release", ""))),)
    assert d.labels == {"Maintainer": "Jane Doe", "Version": "1.0"}
    assert d.app_order == ("tool", "other")
    assert d.apps["appinstall tool"] == "    make install\n"
    assert set(d.apps) == {"appinstall tool", "apprun tool", "apphelp other"}


def test_to_dict_has_apptainers_structure():
    data = Definition.parse(FULL).to_dict()
    assert set(data) == {"header", "imageData", "buildData", "customData", "raw", "fullraw",
                         "appOrder"}
    assert set(data["imageData"]) == {"metadata", "labels", "imageScripts"}
    assert set(data["imageData"]["imageScripts"]) == {"help", "environment", "runScript",
                                                       "test", "startScript"}
    assert set(data["buildData"]) == {"files", "buildScripts"}
    assert set(data["buildData"]["buildScripts"]) == {"pre", "setup", "post", "test"}
    assert data["buildData"]["files"][0]["files"][0] == {"source": "/etc/hostname",
                                                        "destination": "/opt/hostname"}
    assert data["imageData"]["imageScripts"]["test"] == data["buildData"]["buildScripts"]["test"]
    assert base64.b64decode(data["raw"]).decode() == FULL
    assert data["appOrder"] == ["tool", "other"]
    json.dumps(data)  # serialisable


def test_multi_stage_and_files_from_a_stage():
    text = ("Bootstrap: busybox\nStage: build\n\n%post\n    make\n\n"
            "Bootstrap: busybox\nStage: final\n\n%files from build\n    /out /app\n")
    first, second = Definition.parse_stages(text)
    assert (first.stage, second.stage) == ("build", "final")
    assert second.files == (("from build", (FileCopy("/out", "/app"),)),)
    assert first.full_raw == second.full_raw == text
    assert second.line == 7
    with pytest.raises(DefinitionError, match="expected one stage"):
        Definition.parse(text)


def test_files_sections_with_the_same_arguments_merge():
    d = Definition.parse("Bootstrap: scratch\n%files\n a b\n%files from x\n c d\n%files\n e f\n")
    assert d.files == (("", (FileCopy("a", "b"), FileCopy("e", "f"))),
                       ("from x", (FileCopy("c", "d"),)))


def test_definition_without_a_header():
    d = Definition.parse("%runscript\n    echo hi\n")
    assert d.header == {} and d.bootstrap is None
    assert d.to_dict()["header"] is None


def test_build_arguments_given_and_default():
    text = ("Bootstrap: busybox\nFrom: {{ BASE }}\n\n%arguments\n    BASE=default-base\n"
            "    GREETING=hello\n\n%runscript\n    echo {{GREETING}} {{ WHO }}\n")
    d = Definition.parse(text, build_args={"WHO": "world"})
    assert d.header["from"] == "default-base"
    assert d.section("runscript").script == "    echo hello world\n"
    override = Definition.parse(text, build_args={"WHO": "you", "BASE": "given"})
    assert override.header["from"] == "given"


def test_a_build_argument_without_value_is_an_error_with_its_line():
    with pytest.raises(DefinitionError) as caught:
        Definition.parse("Bootstrap: busybox\n\n%post\n    echo {{ MISSING }}\n")
    assert caught.value.line == 4
    assert "MISSING" in str(caught.value) and str(caught.value).startswith("line 4:")


@pytest.mark.parametrize(("text", "line", "message"), [
    ("Bootstrap: busybox\nNosuchkeyword: x\n", 2, "unknown header keyword"),
    ("Bootstrap: busybox\njust words\n", 2, "no 'Keyword: value' form"),
    ("Bootstrap: busybox\n\n%post\n  x\n%bogus\n  y\n", 5, "unknown section %bogus"),
    ("Bootstrap: busybox\n%appinstall\n make\n", 2, "needs an app name"),
    ("", 1, "empty definition"),
    ("# only a comment\n\n", 1, "empty definition"),
    ("Bootstrap: a\nStage: x\nBootstrap: b\nStage: x\n", None, "same Stage name"),
])
def test_malformed_definitions(text, line, message):
    with pytest.raises(DefinitionError, match=message) as caught:
        Definition.parse_stages(text)
    assert caught.value.line == line


def test_from_file(tmp_path):
    path = tmp_path / "image.def"
    path.write_text("Bootstrap: scratch\n%labels\n  A b\n")
    assert Definition.from_file(path).labels == {"A": "b"}
    with pytest.raises(DefinitionError, match="cannot read"):
        Definition.from_file(tmp_path / "missing.def")
    (tmp_path / "binary.def").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DefinitionError):
        Definition.from_file(tmp_path / "binary.def")


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.sampled_from(list("Bootstrap:%{} \n#\\\"'abcFROMpostfiles=")),
               max_size=200))
def test_any_text_parses_or_raises_a_definition_error(text):
    try:
        stages = Definition.parse_stages(text)
    except DefinitionError:
        return
    for stage in stages:
        json.dumps(stage.to_dict())
