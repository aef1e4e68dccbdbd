"""Drawing what ``chexpert-hf explain`` writes as pictures: one overlay per (image, label) — the heatmap blended on
the radiograph with a caption — and one contact sheet per image (its labels, the lesion boxes, a colour bar), all
saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
BOX_COLOUR = (0, 255, 0)  # lesion boxes: green stands out on both the grey radiograph and the jet colour map
COLOURBAR_WIDTH = 14

# a box as (x0, y0, x1, y1) in the pixels of the image the sheet shows
BoxCoords = tuple[float, float, float, float]


@dataclass
class SheetLayout:
    """What :func:`write_sheet` drew, in the sheet's pixels: for tests and for anyone placing marks on a sheet."""

    size: tuple[int, int]
    header: str
    titles: list[str]  # "radiograph", then one per overlay
    panels: list[tuple[int, int, int, int]]  # (left, top, right, bottom) of each panel
    boxes: list[list[tuple[int, int, int, int]]] = field(default_factory=list)  # per panel, in sheet pixels
    colourbar: tuple[int, int, int, int] | None = None


def _jet_bar(height: int) -> Image.Image:
    """A vertical jet colour bar, 1 at the top, as the overlays colour the map (OpenCV's COLORMAP_JET)."""
    import cv2

    values = np.linspace(255, 0, height).astype(np.uint8)[:, None]
    rgb = cv2.applyColorMap(values, cv2.COLORMAP_JET)[:, :, ::-1]  # OpenCV is BGR
    return Image.fromarray(np.repeat(rgb, COLOURBAR_WIDTH, axis=1))


def write_sheet(
    path: Path,
    image: Image.Image,
    overlays: Sequence[Image.Image],
    titles: Sequence[str],
    *,
    header: str = "",
    boxes: Sequence[Sequence[BoxCoords]] | None = None,
    colourbar: bool = True,
) -> SheetLayout:
    """One PNG: a header line (the image's labels), the radiograph, then each label's overlay, side by side under
    their titles; ``boxes`` (one list per panel, the radiograph's first, in the image's pixels) are drawn on the
    panels, and a colour bar (0 to 1, the overlays' scale) closes the row. Returns what was drawn where."""
    width = min(max(image.width, MIN_DISPLAY_WIDTH), SHEET_PANEL_MAX_WIDTH)
    height = round(image.height * width / image.width)
    font = _font(max(11, width // 20))
    line = font.getbbox("Ag")[3] + 4
    header_height = line + 4 if header else 0
    title_height = 2 * line
    gap = 6
    panels = [image.convert("RGB"), *overlays]
    bar_space = COLOURBAR_WIDTH + gap + int(font.getlength("1.0")) + 8 if colourbar and overlays else 0
    top = header_height + title_height
    sheet_size = (len(panels) * (width + gap) - gap + bar_space, top + height)
    sheet = Image.new("RGB", sheet_size, (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if header:
        draw.text((2, 2), header, fill=(0, 0, 0), font=font)
    layout = SheetLayout(sheet_size, header, ["radiograph", *titles], [])
    scale = width / image.width
    for position, (panel, title) in enumerate(zip(panels, ["radiograph", *titles], strict=True)):
        left = position * (width + gap)
        draw.multiline_text((left + 2, header_height + 2), title, fill=(0, 0, 0), font=font, spacing=2)
        if panel.size != (width, height):
            panel = panel.resize((width, height), Image.BILINEAR)
        sheet.paste(panel, (left, top))
        layout.panels.append((left, top, left + width, top + height))
        drawn = []
        for x0, y0, x1, y1 in boxes[position] if boxes is not None and position < len(boxes) else ():
            rectangle = (
                left + round(x0 * scale),
                top + round(y0 * scale),
                left + round(x1 * scale),
                top + round(y1 * scale),
            )
            draw.rectangle(rectangle, outline=BOX_COLOUR, width=2)
            drawn.append(rectangle)
        layout.boxes.append(drawn)
    if bar_space:
        left = len(panels) * (width + gap)
        sheet.paste(_jet_bar(height), (left, top))
        layout.colourbar = (left, top, left + COLOURBAR_WIDTH, top + height)
        draw.text((left + COLOURBAR_WIDTH + 3, top), "1", fill=(0, 0, 0), font=font)
        draw.text((left + COLOURBAR_WIDTH + 3, top + height - line), "0", fill=(0, 0, 0), font=font)
    sheet.save(path, compress_level=PNG_COMPRESSION)
    return layout
