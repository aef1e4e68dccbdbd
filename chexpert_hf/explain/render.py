"""Drawing what ``chexpert-hf explain`` writes as pictures: one overlay per (image, label) — the heatmap blended on
the radiograph with a caption — and one contact sheet per image, all saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PNG_COMPRESSION = 1  # zlib level: PNG encoding was most of a run's time at the default (6); files grow ~1.3x


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


MIN_DISPLAY_WIDTH = 256  # overlays of small (prepared) images are drawn enlarged, so that they can be read


def _fitting_font(draw: ImageDraw.ImageDraw, text: str, width: int) -> ImageFont.ImageFont:
    size = max(10, width // 18)
    font = _font(size)
    while size > 8 and draw.textlength(text, font=font) > width - 8:
        size -= 1
        font = _font(size)
    return font


def render_overlay(image: Image.Image, heatmap: np.ndarray, caption: str) -> Image.Image:
    """The radiograph with the heatmap blended on (jet colour map, half and half) and ``caption`` in the top-left
    corner; at least :data:`MIN_DISPLAY_WIDTH` pixels wide (the map itself stays at the image's size)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if image.width < MIN_DISPLAY_WIDTH:
        size = (MIN_DISPLAY_WIDTH, round(image.height * MIN_DISPLAY_WIDTH / image.width))
        image = image.resize(size, Image.BILINEAR)
        heatmap = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    grey = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    heatmap = np.clip(heatmap, 0.0, 1.0)
    blended = show_cam_on_image(np.repeat(grey[..., None], 3, axis=2), heatmap, use_rgb=True, image_weight=0.5)
    overlay = Image.fromarray(blended)
    draw = ImageDraw.Draw(overlay)
    font = _fitting_font(draw, caption, overlay.width)
    _, _, right, bottom = draw.textbbox((4, 3), caption, font=font)
    draw.rectangle((0, 0, min(overlay.width, right + 4), bottom + 4), fill=(0, 0, 0))
    draw.text((4, 3), caption, fill=(255, 255, 255), font=font)
    return overlay


SHEET_PANEL_MAX_WIDTH = 512  # sheet panels shrink to this: 14 panels of a 2,500 px radiograph would be 100+ Mpx


def write_sheet(path: Path, image: Image.Image, overlays: Sequence[Image.Image], titles: Sequence[str]) -> None:
    """One PNG: the radiograph, then each label's overlay, side by side under their titles."""
    width = min(max(image.width, MIN_DISPLAY_WIDTH), SHEET_PANEL_MAX_WIDTH)
    height = round(image.height * width / image.width)
    font = _font(max(11, width // 20))
    title_height = 2 * (font.getbbox("Ag")[3] + 4)
    gap = 6
    panels = [image.convert("RGB"), *overlays]
    sheet = Image.new("RGB", (len(panels) * (width + gap) - gap, height + title_height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for position, (panel, title) in enumerate(zip(panels, ["radiograph", *titles], strict=True)):
        left = position * (width + gap)
        draw.multiline_text((left + 2, 2), title, fill=(0, 0, 0), font=font, spacing=2)
        if panel.size != (width, height):
            panel = panel.resize((width, height), Image.BILINEAR)
        sheet.paste(panel, (left, title_height))
    sheet.save(path, compress_level=PNG_COMPRESSION)
