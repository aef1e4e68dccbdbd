"""Decoding radiographs once at prepare time: any common encoding in, an 8-bit grayscale JPEG out.

Handles what real collections contain: PNG data under a ``.jpg`` name (the format is read from the
content), RGB and RGBA exports, palette images, 16-bit grayscale, and very large images (JPEGs are
decoded directly at a reduced scale). A file that cannot yield an image raises
:class:`UnreadableImage` whose message is the reason that goes into ``skipped.csv``.
"""

from __future__ import annotations

import io
from contextlib import contextmanager

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

JPEG_QUALITY = 95
# PIL refuses images above ~179 Mpx as a decompression-bomb guard; full-resolution radiographs stay far
# below this, so anything larger is treated as unreadable rather than allowed to exhaust memory.
MAX_PIXELS = 1_000_000_000
_HIGH_BIT_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class UnreadableImage(Exception):
    """The image file cannot be used; ``str(error)`` is the reason recorded in ``skipped.csv``."""


@contextmanager
def _pixel_limit(limit: int):
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit single-channel ("L") version of ``image``; deeper images are stretched over their own range."""
    if image.mode == "L":
        return image
    if image.mode in _HIGH_BIT_DEPTH:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return Image.fromarray(np.round((values - low) * scale).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))  # transparent areas become black (air)
        image = Image.alpha_composite(background, image)
    return image.convert("RGB").convert("L") if image.mode not in ("RGB", "1", "P") else image.convert("L")


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """``image`` scaled so that its shorter side is ``size`` pixels, aspect ratio kept."""
    width, height = image.size
    if min(width, height) == size:
        return image
    scale = size / min(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(target, Image.LANCZOS, reducing_gap=3.0)


def load_radiograph(path: str, short_side: int) -> bytes:
    """JPEG bytes of the radiograph at ``path``: grayscale, shorter side ``short_side``; raises UnreadableImage."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except OSError as error:
        raise UnreadableImage(f"cannot read file: {error.strerror or error}") from None
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        with _pixel_limit(MAX_PIXELS), Image.open(io.BytesIO(data)) as image:
            original_format, original_mode, original_size = image.format, image.mode, image.size
            if image.format == "JPEG":
                image.draft("L", (short_side, short_side))  # decode at 1/2, 1/4 or 1/8 scale when possible
            image.load()
            decoded_size = image.size
            rotated = image.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1)
            image = to_grayscale(ImageOps.exif_transpose(image) if rotated else image)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image (unknown or corrupt format)") from None
    except Image.DecompressionBombError as error:
        raise UnreadableImage(f"image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImage(f"truncated or corrupt image: {error}") from None
    unchanged = decoded_size == original_size and not rotated and min(original_size) == short_side
    if original_format == "JPEG" and original_mode == "L" and unchanged:
        return data  # already what we would write: keep the original bytes, no second JPEG generation
    buffer = io.BytesIO()
    resize_short_side(image, short_side).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
