"""Bind specs: Singularity's src[:dst[:ro|rw]] syntax and the Bind value class."""

from __future__ import annotations

import os

import pytest

from instancelib import Bind, InvalidArgument
from instancelib.binds import parse_binds


@pytest.mark.parametrize(("spec", "expected"), [
    ("/a", [Bind(source="/a", destination="/a")]),
    ("/a:/b", [Bind(source="/a", destination="/b")]),
    ("/a:/b:ro", [Bind(source="/a", destination="/b", read_only=True)]),
    ("/a:/b:rw", [Bind(source="/a", destination="/b")]),
    ("/a::ro", [Bind(source="/a", destination="/a", read_only=True)]),
    ("/a:/b:ro,/c", [Bind(source="/a", destination="/b", read_only=True),
                     Bind(source="/c", destination="/c")]),
    ("/a/../x/", [Bind(source="/x", destination="/x")]),
])
def test_parse(spec, expected):
    assert list(parse_binds(spec)) == expected


def test_relative_source_is_made_absolute():
    (bind,) = parse_binds("data:/data")
    assert bind.source == os.path.join(os.getcwd(), "data")


@pytest.mark.parametrize("spec", ["", ":/b", "/a:/b:rx", "/a:/b:ro:x", "/a:rel", 5])
def test_bad_specs(spec):
    with pytest.raises(InvalidArgument):
        parse_binds([spec])


def test_bind_objects_pass_through_and_print():
    bind = Bind(source="/s", destination="/d", read_only=True)
    assert parse_binds([bind]) == (bind,)
    assert str(bind) == "/s:/d:ro"
    with pytest.raises(InvalidArgument):
        Bind(source="relative")
