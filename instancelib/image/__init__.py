"""Container images: opening them (``Image``) and building small ones."""

from instancelib.image.image import Image as Image

__all__ = ["Image"]
