"""Where the shared conformance corpus is: ``$INSTANCELIB_SHARED_DIR`` or ``../shared``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    configured = os.environ.get("INSTANCELIB_SHARED_DIR")
    return Path(configured) if configured else PROJECT.parent / "shared"


def sif_corpus() -> Path:
    """The SIF reference's test images and goldens; skips when the checkout has none beside it."""
    corpus = shared_dir() / "corpus" / "sif"
    if not (corpus / "test" / "images").is_dir():
        pytest.skip(f"the SIF corpus is not at {corpus} (a checkout outside the build system; "
                    "set INSTANCELIB_SHARED_DIR)")
    return corpus
