"""The public surface: everything in __all__ exists, is documented, and nothing leaks."""

from __future__ import annotations

from pathlib import Path

import instancelib


def test_all_names_exist_and_are_documented():
    for name in instancelib.__all__:
        obj = getattr(instancelib, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"


def test_public_classes_report_the_public_module():
    for name in instancelib.__all__:
        obj = getattr(instancelib, name)
        if isinstance(obj, type):
            assert obj.__module__ == "instancelib", name


def test_no_private_names_exported():
    assert not [n for n in instancelib.__all__ if n.startswith("_") and n != "__version__"]


def test_py_typed_is_shipped():
    assert (Path(instancelib.__file__).parent / "py.typed").exists()
