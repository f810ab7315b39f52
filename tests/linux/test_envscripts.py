"""Parsing ``export -p`` from every shell an image may have, and override rules."""

from __future__ import annotations

import subprocess

import pytest

from instancelib.linux.envscripts import DEFAULT_PATH, apply_overrides, parse_export_p

TRICKY = {
    "PLAIN": "value",
    "SPACES": "a b  c",
    "QUOTE": "it's \"quoted\"",
    "NEWLINE": "line1\nline2",
    "DOLLAR": "$HOME `cmd` \\back",
    "EMPTY": "",
    "UNICODE": "héllo wörld",
    "TAB": "a\tb",
    "EQUALS": "a=b=c",
}


@pytest.mark.parametrize("shell", [["busybox", "sh"], ["dash"], ["bash"], ["bash", "--posix"]])
def test_round_trip_through_real_shells(shell):
    output = subprocess.run([*shell, "-c", "export -p"], env=TRICKY, capture_output=True,
                            text=True, check=True).stdout
    parsed = parse_export_p(output)
    for name, value in TRICKY.items():
        assert parsed.get(name) == value, (shell, name, output)


@pytest.mark.parametrize(("text", "expected"), [
    ("export A='1'\n", {"A": "1"}),
    ("export A='it'\"'\"'s'\n", {"A": "it's"}),
    ('declare -x A="x\\"y"\n', {"A": 'x"y'}),
    ("declare -rx RO=\"r\"\n", {"RO": "r"}),
    ("export UNSET\ndeclare -x ALSO\n", {}),
    ("export A=$'a\\nb\\x41\\101'\n", {"A": "a\nbAA"}),
    ("typeset -x K=v\n", {"K": "v"}),
    ("export A='multi\nline' B=2\n", {"A": "multi\nline", "B": "2"}),
    ("garbage line\nexport OK=1\n", {"OK": "1"}),
    ("export 1BAD=x\n", {}),
])
def test_parse_export_p_cases(text, expected):
    assert parse_export_p(text) == expected


def test_overrides_replace_and_extend_path():
    env = apply_overrides({"PATH": "/bin", "A": "1"},
                          {"A": "2", "APPEND_PATH": "/z", "PREPEND_PATH": "/a"})
    assert env == {"PATH": "/a:/bin:/z", "A": "2"}


def test_overrides_default_path():
    assert apply_overrides({}, {})["PATH"] == DEFAULT_PATH
