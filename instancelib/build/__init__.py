"""Building images: definition files to SIF files or sandboxes, and converting between kinds.

The builder is a client of ``Instance`` (``%post`` and ``%test`` run in an
instance of the image being built), so it sits above instances; the image
layer below knows nothing of it.  See ``builder`` for the sequence of steps.
"""

from instancelib.build.builder import build_image
from instancelib.build.cached import build_cached, default_cache_dir
from instancelib.build.fakeroot import remove_build_tree
from instancelib.build.progress import BuildProgress

__all__ = ["BuildProgress", "build_cached", "build_image", "default_cache_dir",
           "remove_build_tree"]
