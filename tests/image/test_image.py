"""Opening images: what is recognised, and the errors for what is not."""

from __future__ import annotations

import os

import pytest

from instancelib import Image, ImageError


def test_sandbox_directory(make_image):
    image = make_image()
    assert image.kind == "sandbox"
    assert Image(image.path) == image
    assert os.fspath(image) == image.path


def test_missing_path(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        Image(tmp_path / "missing")


def test_directory_that_is_not_a_rootfs(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(ImageError, match="not a root filesystem"):
        Image(tmp_path)


def test_regular_file(tmp_path):
    (tmp_path / "f").write_text("hello")
    with pytest.raises(ImageError, match="regular file"):
        Image(tmp_path / "f")


def test_sif_file_is_named(tmp_path):
    header = b"#!/usr/bin/env run-singularity\n\0" + b"SIF_MAGIC\0" + b"\0" * 64
    (tmp_path / "x.sif").write_bytes(header)
    with pytest.raises(ImageError, match="SIF"):
        Image(tmp_path / "x.sif")
