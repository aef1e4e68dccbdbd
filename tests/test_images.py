import io

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


@pytest.mark.parametrize("mode, value", [("RGB", (200, 200, 200)), ("RGBA", (200, 200, 200, 255)), ("P", 7)])
def test_color_and_palette_images_become_grayscale(tmp_path, mode, value):
    path = save(tmp_path, f"x_{mode}.png", Image.new(mode, (100, 120), value))
    out = decode(load_radiograph(path, 100))
    assert out.mode == "L" and out.size == (100, 120)


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


@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    (b"", r"empty file \(0 bytes\)"),
    (b"this is not an image at all", "not an image"),
])
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
