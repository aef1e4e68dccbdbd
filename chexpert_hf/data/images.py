"""Decoding radiographs once at prepare time: any common encoding in, an 8-bit grayscale JPEG out.

Handles what real collections contain: PNG data under a ``.jpg`` name (the format is read from the
content), RGB and RGBA exports, palette images, 16-bit grayscale, and very large images (JPEGs are
decoded directly at a reduced scale). A file that cannot yield an image raises
:class:`UnreadableImage` whose message is the reason that goes into ``skipped.csv``; no problem with one
file escapes as another exception.
"""

from __future__ import annotations

import io
from contextlib import contextmanager

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

JPEG_QUALITY = 95
# JPEGs are decoded at 1/2-1/8 scale when large (draft mode), so a huge one stays cheap; other formats are
# decoded whole, and above ~180 Mpx (PIL's own guard) that means gigabytes per worker.
MAX_JPEG_PIXELS = 1_000_000_000
MAX_OTHER_PIXELS = 180_000_000
MAX_ASPECT = 10  # a radiograph is never 10x longer than wide; such a header is corrupt
_HIGH_BIT_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_WINDOW_PERCENTILES = (0.5, 99.5)  # deep images are windowed to this range: a few hot pixels don't flatten them


class UnreadableImage(Exception):
    """The image file cannot be used; ``str(error)`` is the reason recorded in ``skipped.csv``."""


@contextmanager
def _size_checked_by_caller():
    """PIL's decompression-bomb guard off for the duration: :func:`_check_size` applies our own limits."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _check_size(image: Image.Image) -> None:
    width, height = image.size
    limit = MAX_JPEG_PIXELS if image.format == "JPEG" else MAX_OTHER_PIXELS
    if width * height > limit:
        raise UnreadableImage(f"image too large to decode safely ({width}x{height} pixels, limit {limit:,})")
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise UnreadableImage(f"implausible shape for a radiograph ({width}x{height} pixels)")


def _window_to_uint8(image: Image.Image) -> Image.Image:
    """8-bit version of a 16/32-bit or float image, windowed to its 0.5-99.5 percentile range."""
    values = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        raise UnreadableImage("no finite pixel values")
    step = max(1, int(np.sqrt(values.size / 1_000_000)))  # percentiles from about a million pixels
    sample = values[::step, ::step]
    sample = sample[np.isfinite(sample)]
    low, high = (float(v) for v in np.percentile(sample if sample.size else values[finite], _WINDOW_PERCENTILES))
    if high <= low:  # a constant image keeps its level relative to the format's full scale
        if image.mode == "F":
            full_scale = 1.0 if 0.0 <= low <= 1.0 else 255.0
        else:
            full_scale = 65535.0  # 16-bit data (PIL opens 16-bit PNGs as "I;16" or "I")
        return Image.new("L", image.size, int(round(float(np.clip(low / full_scale * 255.0, 0, 255)))))
    scaled = (np.where(finite, values, low) - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), mode="L")


def to_grayscale(image: Image.Image) -> Image.Image:
    """8-bit single-channel ("L") version of ``image``; deeper images are windowed to their own range."""
    if image.mode == "L":
        return image
    if image.mode in _HIGH_BIT_DEPTH:
        return _window_to_uint8(image)
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


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except OSError as error:
        raise UnreadableImage(f"cannot read file: {error.strerror or error}") from None
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    return data


@contextmanager
def _decoding(path: str):
    """Open ``path`` as an image for the duration; every decoding failure becomes :class:`UnreadableImage`."""
    data = _read(path)
    try:
        with _size_checked_by_caller(), Image.open(io.BytesIO(data)) as image:
            _check_size(image)
            yield data, image
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableImage(f"truncated or corrupt image: {error}") from None
    except Exception as error:  # a decoder failing in an unforeseen way must not abort a 224k-image run
        raise UnreadableImage(f"cannot decode: {type(error).__name__}: {error}") from None


def _upright_grayscale(image: Image.Image) -> tuple[Image.Image, bool]:
    """The decoded image as 8-bit grey with its EXIF rotation applied, and whether it was rotated."""
    image.load()
    rotated = image.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1)
    return to_grayscale(ImageOps.exif_transpose(image) if rotated else image), rotated


def load_radiograph(path: str, short_side: int) -> bytes:
    """JPEG bytes of the radiograph at ``path``: grayscale, shorter side ``short_side``; raises UnreadableImage."""
    with _decoding(path) as (data, image):
        original = (image.format, image.mode, image.size)
        if image.format == "JPEG":
            image.draft("L", (short_side, short_side))  # decode at 1/2, 1/4 or 1/8 scale when possible
        image, rotated = _upright_grayscale(image)
        unchanged = image.size == original[2] and not rotated and min(original[2]) == short_side
        if original[:2] == ("JPEG", "L") and unchanged:
            return data  # already what we would write: keep the original bytes, no second JPEG generation
        buffer = io.BytesIO()
        resize_short_side(image, short_side).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()


def open_radiograph(path: str) -> Image.Image:
    """The image at ``path`` as an 8-bit grayscale PIL image at full size (for inference on files); raises
    :class:`UnreadableImage` with a message that names the file."""
    try:
        with _decoding(path) as (_, image):
            grey, _ = _upright_grayscale(image)
            return grey.copy() if grey is image else grey
    except UnreadableImage as error:
        raise UnreadableImage(f"{path}: {error}") from None
