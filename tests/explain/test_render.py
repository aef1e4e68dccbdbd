"""Contact sheets: the drawing parameters say where the labels, boxes and colour bar went."""

from __future__ import annotations

import numpy as np
from PIL import Image

from chexpert_hf.explain.render import BOX_COLOUR, COLOURBAR_WIDTH, render_overlay, write_sheet


def test_a_sheet_places_the_header_the_boxes_on_their_panels_and_the_colour_bar(tmp_path):
    image = Image.new("L", (128, 160), 90)  # enlarged to 256 px panels: scale 2
    heatmap = np.zeros((160, 128), dtype=np.float32)
    overlays = [render_overlay(image, heatmap, "Edema"), render_overlay(image, heatmap, "Cardiomegaly")]
    boxes = [[(10, 20, 30, 40), (50, 60, 70, 80)], [(10, 20, 30, 40)], []]
    layout = write_sheet(
        tmp_path / "sheet.png", image, overlays, ["Edema\np = 0.91", "Cardiomegaly\np = 0.12"],
        header="ground truth: Edema", boxes=boxes,
    )  # fmt: skip
    assert layout.header == "ground truth: Edema" and layout.titles[0] == "radiograph"
    assert len(layout.panels) == 3 and [len(drawn) for drawn in layout.boxes] == [2, 1, 0]
    left, top, right, bottom = layout.panels[1]
    assert right - left == 256 and bottom - top == 320
    assert layout.boxes[1][0] == (left + 20, top + 40, left + 60, top + 80)  # the image's pixels, times 2
    bar_left, bar_top, bar_right, bar_bottom = layout.colourbar
    assert bar_right - bar_left == COLOURBAR_WIDTH and (bar_top, bar_bottom) == (top, bottom)
    assert bar_left >= layout.panels[-1][2]
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.size == layout.size
        assert sheet.convert("RGB").getpixel((left + 20, top + 60)) == BOX_COLOUR  # the box's left edge
        top_colour, bottom_colour = (
            sheet.convert("RGB").getpixel((bar_left + 3, y)) for y in (bar_top, bar_bottom - 1)
        )
        assert top_colour[0] > top_colour[2] and bottom_colour[2] > bottom_colour[0]  # jet: red at 1, blue at 0


def test_a_sheet_without_boxes_or_header_has_neither(tmp_path):
    image = Image.new("L", (300, 300), 90)
    layout = write_sheet(tmp_path / "sheet.png", image, [], [], colourbar=True)  # no overlays: no colour bar either
    assert layout.boxes == [[]] and layout.colourbar is None and layout.header == ""
