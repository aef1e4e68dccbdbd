import io
import struct
import zlib

import numpy as np
import pytest
from conftest import gradient, jpeg_bytes
from PIL import Image

from chexpert_hf.data.images import UnreadableImage, load_radiograph


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def save(tmp_path, name, image: Image.Image, **params):
    path = tmp_path / name
    image.save(path, **params)
    return str(path)


def test_grayscale_jpeg_at_target_size_keeps_its_bytes(tmp_path):
    path = tmp_path / "view1_frontal.jpg"
    path.write_bytes(jpeg_bytes((320, 390)))
    assert load_radiograph(str(path), 320) == path.read_bytes()


def test_resizes_shorter_side_and_keeps_aspect(tmp_path):
    path = save(tmp_path, "wide.jpg", Image.fromarray(gradient((400, 300))), quality=95)
    out = decode(load_radiograph(path, 150))
    assert out.format == "JPEG" and out.mode == "L" and out.size == (200, 150)
    row = np.asarray(out, dtype=np.float32)[75]
    assert row[:10].mean() < 20 and row[-10:].mean() > 235  # the ramp survived


@pytest.mark.parametrize("mode, value", [("RGB", (200, 200, 200)), ("RGBA", (200, 200, 200, 255)), ("P", 200)])
def test_color_and_palette_images_become_grayscale(tmp_path, mode, value):
    image = Image.new(mode, (100, 120), value)
    if mode == "P":
        image.putpalette([channel for grey in range(256) for channel in (grey, grey, grey)])
    out = decode(load_radiograph(save(tmp_path, f"x_{mode}.png", image), 100))
    assert out.mode == "L" and out.size == (100, 120)
    assert abs(np.asarray(out, dtype=np.float32).mean() - 200) < 2


def test_rgba_transparency_becomes_black(tmp_path):
    image = Image.new("RGBA", (100, 100), (255, 255, 255, 255))
    image.paste((255, 255, 255, 0), (0, 0, 50, 100))
    out = np.asarray(decode(load_radiograph(save(tmp_path, "a.png", image), 100)), dtype=np.float32)
    assert out[:, :40].mean() < 10 and out[:, 60:].mean() > 245


def test_png_data_under_a_jpg_name(tmp_path):
    path = tmp_path / "view1_frontal.jpg"
    Image.fromarray(gradient((160, 200))).save(path, format="PNG")
    out = decode(load_radiograph(str(path), 160))
    assert out.format == "JPEG" and out.size == (160, 200)


def test_sixteen_bit_grayscale_is_stretched_to_eight_bits(tmp_path):
    values = np.tile(np.linspace(1000, 4095, 128), (128, 1)).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    image = Image.fromarray(values)
    assert image.mode.startswith("I")
    out = np.asarray(decode(load_radiograph(save(tmp_path, "deep.png", image), 128)), dtype=np.float32)
    assert out[:, 0].mean() < 5 and out[:, -1].mean() > 250
    assert np.all(np.diff(out[64, 5:-5]) >= -3)  # still a monotonic ramp


def test_very_large_jpeg_beyond_pil_bomb_limit(tmp_path):
    # 14,000 x 13,000 = 182 Mpx: PIL's default guard raises above ~179 Mpx; we decode it at 1/8 scale.
    path = save(tmp_path, "huge.jpg", Image.new("L", (14_000, 13_000), 90), quality=50)
    assert Image.MAX_IMAGE_PIXELS and 2 * Image.MAX_IMAGE_PIXELS < 14_000 * 13_000
    out = decode(load_radiograph(path, 320))
    assert min(out.size) == 320 and out.size == (345, 320)


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "file not found"),
        (b"", r"empty file \(0 bytes\)"),
        (b"this is not an image at all", "not an image"),
    ],
)
def test_unusable_files_give_a_reason(tmp_path, content, reason):
    path = tmp_path / "view1_frontal.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        load_radiograph(str(path), 64)


def test_truncated_jpeg(tmp_path):
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)).save(data, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(UnreadableImage, match="truncated or corrupt"):
        load_radiograph(str(path), 64)


def test_sixteen_bit_windowing_ignores_hot_pixels_and_keeps_constant_levels(tmp_path):
    values = np.full((100, 100), 1000, dtype=np.uint16)
    values[:, 50:] = 3000
    values[0, 0] = 65535  # one saturated pixel
    out = np.asarray(decode(load_radiograph(save(tmp_path, "hot.png", Image.fromarray(values)), 100)), np.float32)
    assert out[5:, 5:45].mean() < 10 and out[5:, 55:].mean() > 245  # full contrast despite the hot pixel
    for level in (0, 32896, 65535):
        constant = Image.fromarray(np.full((64, 64), level, dtype=np.uint16))
        out = np.asarray(decode(load_radiograph(save(tmp_path, f"c{level}.png", constant), 64)), np.float32)
        assert abs(out.mean() - level / 257) < 2


def test_float_images_with_nan_and_without_finite_values(tmp_path):
    values = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    values[10:20, 10:20] = np.nan
    out = np.asarray(decode(load_radiograph(save(tmp_path, "f.tiff", Image.fromarray(values, mode="F")), 64)))
    assert out[:, -3:].mean() > 240 and out[30:, :3].mean() < 15
    blank = Image.fromarray(np.full((64, 64), np.nan, dtype=np.float32), mode="F")
    with pytest.raises(UnreadableImage, match="no finite pixel values"):
        load_radiograph(save(tmp_path, "nan.tiff", blank), 64)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(gradient((120, 80)))  # dark on the left, bright on the right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(tmp_path, "rotated.jpg", image, exif=exif.tobytes(), quality=95)
    out = decode(load_radiograph(path, 80))
    assert out.size == (80, 120)
    pixels = np.asarray(out, dtype=np.float32)
    assert pixels[:10].mean() < 30 and pixels[-10:].mean() > 225  # the ramp now runs top to bottom


def test_implausible_shapes_and_oversized_headers_are_skipped_not_crashed(tmp_path):
    with pytest.raises(UnreadableImage, match=r"implausible shape for a radiograph \(2x2100 pixels\)"):
        load_radiograph(save(tmp_path, "sliver.png", Image.new("L", (2, 2100))), 64)

    # A PNG whose header claims 20,000 x 20,000 pixels: refused before anything is decoded.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0))
    path = tmp_path / "claims_huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    with pytest.raises(UnreadableImage, match="image too large to decode safely"):
        load_radiograph(str(path), 64)
