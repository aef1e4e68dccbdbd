"""A synthetic CheXpert: the exact CheXpert-v1.0-small layout, with learnable radiograph-like images.

Real CheXpert needs a Stanford account, so the project's embedded default is this generator. It writes

    OUTPUT/CheXpert-v1.0-small/train.csv, valid.csv, lesions.csv, synthetic.json, train/, valid/
                              [test/, groundtruth.csv]

with CheXpert's real header, ``patientNNNNN/studyN/viewN_frontal.jpg`` paths, frontal and lateral views,
several studies per patient, and labels (1 / 0 / -1 / blank) drawn at the per-study rates measured on the
real ``train.csv``. Each finding leaves a visual signature sized to survive a downscale to 64 px (an
enlarged heart, a basal opacity with a meniscus, perihilar haze, a focal dense patch, a plate-like band
with a raised hemidiaphragm, a small round nodule, bright tubes ...); uncertain findings are drawn
fainter. ``lesions.csv`` (``path,label,x0,y0,x1,y1``) gives where each localised finding was drawn on a
frontal view: every pixel a finding changes lies in its boxes (Atelectasis has two, the band and the raised
hemidiaphragm). Everything is deterministic in ``seed``, whatever the number of worker processes.
``synthetic.json`` records the settings and :data:`GENERATOR_REVISION`, so a cached tree from an older generator
is recognised and made again.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from chexpert_hf.labels import CHEXPERT_LABELS
from chexpert_hf.utils import current_umask

DATASET_FOLDER = "CheXpert-v1.0-small"
TRAIN_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
LESION_HEADER = ("path", "label", "x0", "y0", "x1", "y1")
# Raised whenever the same settings would write different files (2: lesion boxes cover all a finding draws: the
# raised hemidiaphragm of Atelectasis, a pacemaker's can).
GENERATOR_REVISION = 2
GENERATOR_FILE = "synthetic.json"

WIDTH, HEIGHT = 320, 390  # CheXpert-v1.0-small images are 320 px on the short side
_HALF = 0.5  # images are composed at half resolution and upscaled once; sharp devices and noise added after
HALF_SHAPE = (int(HEIGHT * _HALF), int(WIDTH * _HALF))

# Per-study rates (positive, negative, uncertain; the rest is blank) measured on CheXpert's real
# train.csv (187,641 studies, the copy shipped inside torchxrayvision).
STUDY_LABEL_RATES: dict[str, tuple[float, float, float]] = {
    "No Finding": (0.0886, 0.0, 0.0),
    "Enlarged Cardiomediastinum": (0.0481, 0.0801, 0.0541),
    "Cardiomegaly": (0.1226, 0.0411, 0.0352),
    "Lung Opacity": (0.4939, 0.0264, 0.0231),
    "Lung Lesion": (0.0365, 0.0040, 0.0057),
    "Edema": (0.2606, 0.0835, 0.0617),
    "Consolidation": (0.0678, 0.1023, 0.1278),
    "Pneumonia": (0.0244, 0.0098, 0.0834),
    "Atelectasis": (0.1563, 0.0054, 0.1566),
    "Pneumothorax": (0.0923, 0.2505, 0.0142),
    "Pleural Effusion": (0.4034, 0.1323, 0.0502),
    "Pleural Other": (0.0130, 0.0011, 0.0094),
    "Fracture": (0.0387, 0.0104, 0.0026),
    "Support Devices": (0.5640, 0.0280, 0.0048),
}
# Share of patients with 1, 2, ... 10 studies in the real train.csv; the remainder has 11-20.
STUDIES_PER_PATIENT = (0.520, 0.173, 0.092, 0.057, 0.038, 0.026, 0.018, 0.014, 0.011, 0.008)
# Images per study: 1, 2 or 3 (real train.csv: 81.9%, 17.2%, 0.9%).
IMAGES_PER_STUDY = (0.819, 0.172, 0.009)
# Frontal projection; LL and RL are rarer in the real data (17 of 191,027) but kept visible here.
AP_PA = (("AP", 0.842), ("PA", 0.154), ("LL", 0.003), ("RL", 0.001))
AP_PA_SHARES = np.array([share for _, share in AP_PA]) / sum(share for _, share in AP_PA)

PATHOLOGIES = tuple(name for name in CHEXPERT_LABELS if name not in ("No Finding", "Support Devices"))
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}

# Intensity of a finding: full for a positive label, faint for an uncertain one.
POSITIVE_STRENGTH = (0.75, 1.0)
UNCERTAIN_STRENGTH = (0.3, 0.5)


# --- labels ----------------------------------------------------------------------------------------------
def sample_train_labels(rng: np.random.Generator) -> dict[str, float]:
    """One study's raw labels (1, 0, -1 or NaN) at the real per-study rates."""
    healthy = rng.random() < STUDY_LABEL_RATES["No Finding"][0]
    labels: dict[str, float] = {}
    for name in PATHOLOGIES + ("Support Devices",):
        positive, negative, uncertain = STUDY_LABEL_RATES[name]
        draw = rng.random()
        if healthy and name != "Support Devices":
            labels[name] = 0.0 if draw < negative else math.nan
            continue
        if name != "Support Devices":  # keep the overall rates: pathologies only occur in the non-healthy share
            scale = 1.0 / (1.0 - STUDY_LABEL_RATES["No Finding"][0])
            positive, uncertain = positive * scale, uncertain * scale
        if draw < positive:
            labels[name] = 1.0
        elif draw < positive + uncertain:
            labels[name] = -1.0
        elif draw < positive + uncertain + negative:
            labels[name] = 0.0
        else:
            labels[name] = math.nan
    labels["No Finding"] = 1.0 if healthy else math.nan
    return {name: labels[name] for name in CHEXPERT_LABELS}


def sample_expert_labels(rng: np.random.Generator) -> dict[str, float]:
    """One study's labels as in the official valid/test sets: radiologist consensus, 0 or 1 only."""
    healthy = rng.random() < 0.12
    labels = {}
    for name in PATHOLOGIES + ("Support Devices",):
        positive, _, uncertain = STUDY_LABEL_RATES[name]
        if healthy and name != "Support Devices":
            labels[name] = 0.0
        else:
            labels[name] = float(rng.random() < min(0.6, positive + 0.5 * uncertain))
    labels["No Finding"] = float(not any(labels[name] == 1.0 for name in PATHOLOGIES))
    return {name: labels[name] for name in CHEXPERT_LABELS}


# --- geometry --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thorax:
    """A patient's frontal anatomy in full-resolution pixel coordinates (image x grows to the patient's left)."""

    cx: float  # midline
    apex: float  # top of the lungs
    base: float  # costophrenic angles
    half_width: float  # midline to the lateral chest wall
    mediastinum: float  # midline to the medial lung edge

    def lung_span(self, side: str, y: float) -> tuple[float, float]:
        """Horizontal extent (x0, x1) of one lung at height y; side is the patient's 'right' or 'left'."""
        depth = min(max((y - self.apex) / (self.base - self.apex), 0.0), 1.0)
        lateral = self.mediastinum + 12 + (self.half_width - self.mediastinum - 20) * math.sqrt(depth)
        if side == "right":  # patient's right is the image's left
            return self.cx - lateral, self.cx - self.mediastinum - 4
        return self.cx + self.mediastinum + 4, self.cx + lateral

    def lung_polygon(self, side: str, dome: float) -> list[tuple[float, float]]:
        ys = np.linspace(self.apex, self.base, 14)
        lateral = [self.lung_span(side, y)[0 if side == "right" else 1] for y in ys]
        medial_x = self.lung_span(side, self.base)[1 if side == "right" else 0]
        outline = list(zip(lateral, ys, strict=True))
        mid_x = (lateral[-1] + medial_x) / 2
        outline += [(mid_x, self.base - dome), (medial_x, self.base - 0.4 * dome), (medial_x, self.apex + 14)]
        return outline


def _sample_thorax(rng: np.random.Generator) -> Thorax:
    return Thorax(
        cx=WIDTH / 2 + rng.uniform(-8, 8),
        apex=rng.uniform(52, 68),
        base=rng.uniform(292, 312),
        half_width=rng.uniform(118, 134),
        mediastinum=rng.uniform(20, 25),
    )


@lru_cache(maxsize=4)
def _texture(kind: str) -> np.ndarray:
    """Fixed noise fields twice the image size; each image reads a random window (cheaper than fresh noise).

    ``mottle`` is full-resolution quantum noise (int16, sigma 5 grey levels); ``markings`` is a smooth
    half-resolution field (unit variance) for the lungs' vascular pattern.
    """
    rng = np.random.default_rng({"mottle": 1, "markings": 2}[kind])
    if kind == "mottle":
        return np.round(rng.normal(0.0, 5.0, (2 * HEIGHT, 2 * WIDTH))).astype(np.int16)
    height, width = HALF_SHAPE
    coarse = Image.fromarray(rng.integers(0, 256, (height // 2, width // 2), dtype=np.uint8))
    fine = coarse.resize((2 * width, 2 * height), Image.BICUBIC).filter(ImageFilter.GaussianBlur(1.5))
    values = np.asarray(fine, dtype=np.float32)
    return (values - values.mean()) / (values.std() + 1e-6)


def _window(texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = texture.shape[0] // 2, texture.shape[1] // 2
    y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
    return texture[y : y + height, x : x + width]


class _SoftLayer:
    """An opacity layer in [0, 1], drawn in full-resolution coordinates at half resolution."""

    def __init__(self) -> None:
        self.image = Image.new("L", (int(WIDTH * _HALF), int(HEIGHT * _HALF)), 0)
        self.draw = ImageDraw.Draw(self.image)

    @staticmethod
    def _scale(points):
        return [(x * _HALF, y * _HALF) for x, y in points]

    def ellipse(self, box, alpha: float) -> None:
        x0, y0, x1, y1 = (v * _HALF for v in box)
        self.draw.ellipse((x0, y0, x1, y1), fill=int(255 * alpha))

    def polygon(self, points, alpha: float) -> None:
        self.draw.polygon(self._scale(points), fill=int(255 * alpha))

    def line(self, points, alpha: float, width: float) -> None:
        self.draw.line(self._scale(points), fill=int(255 * alpha), width=max(1, round(width * _HALF)), joint="curve")

    def rectangle(self, box, alpha: float) -> None:
        x0, y0, x1, y1 = (v * _HALF for v in box)
        self.draw.rectangle((x0, y0, x1, y1), fill=int(255 * alpha))

    def render(self, blur: float = 1.5) -> np.ndarray:
        """The layer softened by a box blur (radius in half-resolution pixels; one pass, half the cost of a
        Gaussian, and the upscale that follows smooths it further), as a half-resolution float array."""
        return np.asarray(self.image.filter(ImageFilter.BoxBlur(blur)), dtype=np.float32) / 255.0


def _box(points, pad: float = 0.0) -> tuple[int, int, int, int]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return (
        int(max(0, min(xs) - pad)),
        int(max(0, min(ys) - pad)),
        int(min(WIDTH - 1, max(xs) + pad)),
        int(min(HEIGHT - 1, max(ys) + pad)),
    )


# --- anatomy (per patient) -------------------------------------------------------------------------------
def _frontal_anatomy(thorax: Thorax, rng: np.random.Generator) -> np.ndarray:
    layer = _SoftLayer()
    body = thorax.half_width + rng.uniform(20, 32)
    # soft tissue of the trunk and shoulders
    layer.polygon(
        [
            (thorax.cx - body, HEIGHT),
            (thorax.cx - body, 70),
            (thorax.cx - body + 40, 20),
            (thorax.cx + body - 40, 20),
            (thorax.cx + body, 70),
            (thorax.cx + body, HEIGHT),
        ],
        0.48,
    )
    dome = rng.uniform(18, 28)
    for side in ("right", "left"):
        layer.polygon(thorax.lung_polygon(side, dome), 0.16)
    layer.rectangle((thorax.cx - 13, 0, thorax.cx + 13, HEIGHT), 0.62)  # spine behind the mediastinum
    anatomy = layer.render(blur=2.0) * 255.0

    bone = _SoftLayer()
    for side, sign in (("right", -1), ("left", 1)):
        bone.line(
            [(thorax.cx + sign * 28, thorax.apex + 18), (thorax.cx + sign * (thorax.half_width - 8), thorax.apex - 6)],
            0.5,
            7,
        )  # clavicle
        for k in range(9):  # posterior ribs: arcs sloping down laterally
            y = thorax.apex + 8 + k * (thorax.base - thorax.apex - 20) / 9
            x0, x1 = thorax.lung_span(side, y + 10)
            medial, lateral = (x1, x0) if side == "right" else (x0, x1)
            bone.line([(medial, y), ((medial + lateral) / 2, y - 6), (lateral, y + 16)], 0.22, 6)
    anatomy += bone.render(blur=1.2) * 90.0
    lungs = ((anatomy > 20) & (anatomy < 0.3 * 255)).astype(np.float32)
    anatomy += lungs * _window(_texture("markings"), rng) * 7.0  # vascular markings
    return anatomy


def _lateral_anatomy(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    layer = _SoftLayer()
    front, back = rng.uniform(38, 52), rng.uniform(268, 284)
    layer.ellipse((front, 30, back, HEIGHT + 120), 0.5)
    geometry = {"front": front + 20, "back": back - 40, "base": rng.uniform(290, 310), "apex": rng.uniform(45, 60)}
    layer.ellipse((geometry["front"], geometry["apex"], geometry["back"], geometry["base"] + 40), 0.2)
    layer.rectangle((back - 52, 0, back - 22, HEIGHT), 0.7)  # spine
    anatomy = layer.render(blur=2.5) * 255.0
    anatomy += _window(_texture("markings"), rng) * 5.0
    return anatomy, geometry


# --- findings (per study) --------------------------------------------------------------------------------
@dataclass
class _Canvas:
    """What a study's findings draw into: opacities, lucencies, sharp devices, and lesion boxes."""

    density: _SoftLayer = field(default_factory=_SoftLayer)
    lucency: _SoftLayer | None = None
    devices: list[tuple[list[tuple[float, float]], int, int]] = field(default_factory=list)
    lesions: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)


def _strength(state: float, rng: np.random.Generator) -> float:
    low, high = POSITIVE_STRENGTH if state == 1.0 else UNCERTAIN_STRENGTH
    return float(rng.uniform(low, high))


def _draws(state: float) -> bool:
    return state == 1.0 or state == -1.0


def _point_in_lung(thorax: Thorax, side: str, zone: tuple[float, float], rng: np.random.Generator, margin=18):
    y = thorax.apex + (thorax.base - thorax.apex) * rng.uniform(*zone)
    x0, x1 = thorax.lung_span(side, y)
    return float(rng.uniform(x0 + margin, max(x0 + margin + 1, x1 - margin))), float(y)


def _draw_frontal_findings(labels: dict[str, float], thorax: Thorax, rng: np.random.Generator) -> _Canvas:
    canvas = _Canvas()
    density = canvas.density
    cx = thorax.cx
    sides = ("right", "left")

    # Heart: cardiothoracic ratio ~0.45 normally, ~0.6 in cardiomegaly; it sits mostly to the patient's left.
    # All three sizes are drawn whatever the label, so the draws that follow (positions of the other findings)
    # do not depend on this label's state.
    state = labels["Cardiomegaly"]
    ratio = {1.0: rng.uniform(0.57, 0.65), -1.0: rng.uniform(0.51, 0.55)}.get(state, rng.uniform(0.40, 0.47))
    heart_w = ratio * 2 * thorax.half_width
    heart = (cx - 0.38 * heart_w, thorax.base - 0.58 * heart_w - 20, cx + 0.62 * heart_w, thorax.base - 8)
    density.ellipse(heart, 0.78)
    if _draws(state):
        canvas.lesions.append(("Cardiomegaly", _box([heart[:2], heart[2:]])))

    # Upper mediastinum: wider when the cardiomediastinum is enlarged.
    state = labels["Enlarged Cardiomediastinum"]
    half = {1.0: rng.uniform(36, 44), -1.0: rng.uniform(30, 34)}.get(state, rng.uniform(19, 24))
    mediastinum = (cx - half, thorax.apex - 30, cx + half, heart[1] + 30)
    density.rectangle(mediastinum, 0.72)
    if _draws(state):
        canvas.lesions.append(("Enlarged Cardiomediastinum", _box([mediastinum[:2], mediastinum[2:]])))

    state = labels["Pleural Effusion"]  # basal opacity with a meniscus rising laterally
    if _draws(state):
        alpha = 0.85 * _strength(state, rng)
        chosen = sides if rng.random() < 0.35 else (sides[int(rng.integers(2))],)
        for side in chosen:
            height = rng.uniform(40, 95) if state == 1.0 else rng.uniform(22, 36)
            lat0, med0 = thorax.lung_span(side, thorax.base)
            lateral, medial = (lat0, med0) if side == "right" else (med0, lat0)
            top_lat = thorax.lung_span(side, thorax.base - height - 25)[0 if side == "right" else 1]
            across = medial - lateral  # the meniscus: highest at the lateral wall, sagging medially
            points = [
                (lateral - 6, thorax.base + 4),
                (top_lat - 3, thorax.base - height - 25),
                (lateral + 0.2 * across, thorax.base - height - 10),
                (lateral + 0.5 * across, thorax.base - height),
                (medial + 4, thorax.base - height + 6),
                (medial + 4, thorax.base + 14),
            ]
            density.polygon(points, alpha)
            canvas.lesions.append(("Pleural Effusion", _box(points)))

    state = labels["Edema"]  # bilateral perihilar (bat-wing) haze with interstitial lines
    if _draws(state):
        alpha = 0.5 * _strength(state, rng)
        mid_y = thorax.apex + 0.52 * (thorax.base - thorax.apex)
        for sign in (-1, 1):
            hx = cx + sign * (thorax.mediastinum + rng.uniform(30, 40))
            w, h = rng.uniform(34, 44), rng.uniform(52, 66)
            box = (hx - w, mid_y - h, hx + w, mid_y + h)
            density.ellipse(box, alpha)
            for _ in range(4):
                ly = rng.uniform(mid_y - h * 0.8, mid_y + h * 0.8)
                density.line([(hx - w * 0.9, ly), (hx + w * 0.9, ly + rng.uniform(-8, 8))], alpha * 1.4, 3)
            canvas.lesions.append(("Edema", _box([box[:2], box[2:]])))

    state = labels["Consolidation"]  # a dense, well-filled focal patch in one zone
    if _draws(state):
        alpha = 0.8 * _strength(state, rng)
        side = sides[int(rng.integers(2))]
        x, y = _point_in_lung(thorax, side, (0.25, 0.75), rng, margin=30)
        size = rng.uniform(22, 34)
        blobs = []
        for _ in range(4):
            bx, by = x + rng.uniform(-0.5, 0.5) * size, y + rng.uniform(-0.5, 0.5) * size
            r = size * rng.uniform(0.55, 0.8)
            density.ellipse((bx - r, by - r, bx + r, by + r), alpha)
            blobs += [(bx - r, by - r), (bx + r, by + r)]
        canvas.lesions.append(("Consolidation", _box(blobs)))

    state = labels["Pneumonia"]  # ill-defined patchy opacities spread over a lobe
    if _draws(state):
        alpha = 0.45 * _strength(state, rng)
        side = sides[int(rng.integers(2))]
        x, y = _point_in_lung(thorax, side, (0.35, 0.8), rng, margin=30)
        spots = []
        for _ in range(7):
            sx, sy, r = x + rng.uniform(-35, 35), y + rng.uniform(-40, 40), rng.uniform(9, 16)
            density.ellipse((sx - r, sy - r, sx + r, sy + r), alpha)
            spots += [(sx - r, sy - r), (sx + r, sy + r)]
        canvas.lesions.append(("Pneumonia", _box(spots)))

    state = labels["Atelectasis"]  # plate-like band in a lower zone, hemidiaphragm pulled up
    if _draws(state):
        alpha = 0.8 * _strength(state, rng)
        side = sides[int(rng.integers(2))]
        y = thorax.apex + (thorax.base - thorax.apex) * rng.uniform(0.6, 0.78)
        x0, x1 = thorax.lung_span(side, y)
        length = min(x1 - x0 - 16, rng.uniform(60, 90))
        start = x0 + 8 + rng.uniform(0, max(1.0, x1 - x0 - 16 - length))
        tilt = rng.uniform(-14, 14)
        band = [(start, y - tilt / 2), (start + length, y + tilt / 2)]
        density.line(band, alpha, rng.uniform(12, 16))
        lat0, med0 = thorax.lung_span(side, thorax.base)
        lift = rng.uniform(16, 24) * (1.0 if labels["Atelectasis"] == 1.0 else 0.6)
        dome = [
            (lat0, thorax.base + 6),
            (lat0, thorax.base - lift),
            (med0, thorax.base - lift),
            (med0, thorax.base + 6),
        ]
        density.polygon(dome, alpha)
        # two boxes: the band and the lifted hemidiaphragm (the volume loss, most of what is drawn)
        canvas.lesions.append(("Atelectasis", _box(band, pad=8)))
        canvas.lesions.append(("Atelectasis", _box(dome)))

    state = labels["Lung Lesion"]  # a small, well-defined round nodule
    if _draws(state):
        x, y = _point_in_lung(thorax, sides[int(rng.integers(2))], (0.15, 0.7), rng)
        r = rng.uniform(7, 12)
        density.ellipse((x - r, y - r, x + r, y + r), 0.9 * _strength(state, rng))
        canvas.lesions.append(("Lung Lesion", _box([(x - r, y - r), (x + r, y + r)])))

    state = labels["Lung Opacity"]  # the umbrella finding: an extra hazy patch when it is present
    if _draws(state):
        x, y = _point_in_lung(thorax, sides[int(rng.integers(2))], (0.2, 0.8), rng, margin=24)
        w, h = rng.uniform(16, 26), rng.uniform(20, 32)
        density.ellipse((x - w, y - h, x + w, y + h), 0.5 * _strength(state, rng))
        canvas.lesions.append(("Lung Opacity", _box([(x - w, y - h), (x + w, y + h)])))

    state = labels["Pleural Other"]  # pleural thickening along the lateral chest wall
    if _draws(state):
        side = sides[int(rng.integers(2))]
        y0 = thorax.apex + (thorax.base - thorax.apex) * rng.uniform(0.25, 0.55)
        y1 = y0 + rng.uniform(60, 110)
        edge = 0 if side == "right" else 1
        points = [(thorax.lung_span(side, y)[edge], y) for y in np.linspace(y0, y1, 6)]
        density.line(points, 0.75 * _strength(state, rng), rng.uniform(9, 12))
        canvas.lesions.append(("Pleural Other", _box(points, pad=6)))

    state = labels["Fracture"]  # a rib with a bright callus at its lateral arc
    if _draws(state):
        side = sides[int(rng.integers(2))]
        y = thorax.apex + (thorax.base - thorax.apex) * rng.uniform(0.2, 0.7)
        x = thorax.lung_span(side, y)[0 if side == "right" else 1] + (10 if side == "right" else -10)
        r = rng.uniform(7, 10)
        density.ellipse((x - r, y - r * 0.7, x + r, y + r * 0.7), 0.95 * _strength(state, rng))
        canvas.lesions.append(("Fracture", _box([(x - r, y - r), (x + r, y + r)])))

    state = labels["Pneumothorax"]  # apical lucency without markings, bounded by a thin pleural line
    if _draws(state):
        side = sides[int(rng.integers(2))]
        depth = rng.uniform(18, 32) * (1.0 if state == 1.0 else 0.6)
        bottom = thorax.apex + rng.uniform(90, 150)
        edge = 0 if side == "right" else 1
        sign = 1 if side == "right" else -1
        ys = np.linspace(thorax.apex - 4, bottom, 8)
        wall = [(thorax.lung_span(side, y)[edge], y) for y in ys]
        taper = np.sin(np.linspace(0.15, math.pi - 0.15, len(ys))) ** 0.5
        line = [(x + sign * depth * t, y) for (x, y), t in zip(wall, taper, strict=True)]
        canvas.lucency = _SoftLayer()
        canvas.lucency.polygon(wall + line[::-1], _strength(state, rng))
        canvas.devices.append((line, 2, int(150 + 60 * _strength(state, rng))))
        canvas.lesions.append(("Pneumothorax", _box(wall + line)))

    state = labels["Support Devices"]  # bright, sharp tubes and lines
    if _draws(state):
        value = 250 if state == 1.0 else 185
        trachea_end = thorax.apex + rng.uniform(40, 60)
        choices = rng.permutation(4)[: int(rng.integers(1, 4))]
        for choice in choices:
            if choice == 0:  # endotracheal tube
                points = [(cx + rng.uniform(-3, 3), 0), (cx + rng.uniform(-2, 2), trachea_end)]
            elif choice == 1:  # central venous line from the right subclavian into the SVC
                points = [
                    (cx - thorax.half_width + 20, thorax.apex - 10),
                    (cx - 45, thorax.apex + 5),
                    (cx - 10, thorax.apex + 35),
                    (cx - 8, thorax.apex + 95),
                ]
            elif choice == 2:  # enteric tube down the midline into the stomach
                points = [
                    (cx + 4, 0),
                    (cx + 6, thorax.base - 10),
                    (cx + 45, thorax.base + 40),
                    (cx + 70, thorax.base + 55),
                ]
            else:  # pacemaker can with its lead
                px, py = cx + thorax.half_width - 30, thorax.apex + 10
                points = [(px, py), (cx + 30, thorax.apex + 40), (cx + 10, thorax.base - 60)]
                can = [(px - 14, py - 9), (px + 14, py - 9), (px + 14, py + 9), (px - 14, py + 9), (px - 14, py - 9)]
                canvas.devices.append((can, 9, value))
                canvas.lesions.append(("Support Devices", _box(can, pad=5)))
            canvas.devices.append((points, 4, value))
            canvas.lesions.append(("Support Devices", _box(points, pad=4)))
    return canvas


def _draw_lateral_findings(labels: dict[str, float], geometry: dict[str, float], rng) -> _Canvas:
    """The lateral view shows fewer findings: heart size, posterior effusion, devices, and a generic haze."""
    canvas = _Canvas()
    front, back, base = geometry["front"], geometry["back"], geometry["base"]
    heart_depth = 95 + 40 * (labels["Cardiomegaly"] == 1.0) + 15 * (labels["Cardiomegaly"] == -1.0)
    canvas.density.ellipse((front - 10, base - 150, front + heart_depth, base + 10), 0.7)
    if _draws(labels["Pleural Effusion"]):
        height = 50 * _strength(labels["Pleural Effusion"], rng)
        canvas.density.polygon([(back - 70, base + 20), (back, base - height), (back + 10, base + 20)], 0.8)
    opacities = [
        name for name in ("Edema", "Consolidation", "Pneumonia", "Atelectasis", "Lung Opacity") if _draws(labels[name])
    ]
    if opacities:
        x, y = rng.uniform(front + 60, back - 40), rng.uniform(base - 150, base - 50)
        canvas.density.ellipse((x - 30, y - 30, x + 30, y + 30), 0.15 * len(opacities))
    if _draws(labels["Support Devices"]):
        canvas.devices.append(([(front + 80, 0), (front + 90, base - 60)], 4, 240))
    return canvas


def _compose(anatomy: np.ndarray, canvas: _Canvas, rng: np.random.Generator) -> Image.Image:
    image = anatomy.copy()
    if canvas.lucency is not None:
        image *= 1.0 - 0.45 * canvas.lucency.render(blur=1.2)
    image += (238.0 - image) * canvas.density.render()
    gain, offset = rng.uniform(0.88, 1.12), rng.uniform(-12, 12)
    image = image * gain + offset
    half = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    full = np.asarray(half.resize((WIDTH, HEIGHT), Image.BILINEAR), dtype=np.int16)
    picture = Image.fromarray(np.clip(full + _window(_texture("mottle"), rng), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for points, width, value in canvas.devices:
        draw.line(points, fill=value, width=width, joint="curve")
    return picture


def _encode(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# --- patients --------------------------------------------------------------------------------------------
def _format_label(value: float, integer: bool = False) -> str:
    if math.isnan(value):
        return ""
    return str(int(value)) if integer else f"{value:.1f}"


def _views_for_study(rng: np.random.Generator) -> list[str]:
    count = 1 + int(rng.choice(3, p=IMAGES_PER_STUDY))
    if count == 1:
        return ["frontal"]
    second = "lateral" if rng.random() < 0.9 else "frontal"
    return ["frontal", second, "lateral"][:count]


def _studies_for_patient(rng: np.random.Generator, split: str) -> int:
    if split != "train":
        return 1  # like the official valid/test sets: one study per patient
    shares = np.array(STUDIES_PER_PATIENT)
    if rng.random() < shares.sum():
        return 1 + int(rng.choice(len(shares), p=shares / shares.sum()))
    return int(rng.integers(11, 21))


def synthesize_patient(
    seed: int, split: str, index: int, patient: int | None = None
) -> tuple[list[dict], list[tuple], list[tuple]]:
    """Render the ``index``-th patient (from 1) of a split, written as ``patient{patient:05d}`` (default: index).

    Returns (rows of the split CSV, lesion rows, files as (relative path, JPEG bytes)). The content depends
    only on ``(seed, split, index)``, so the validation set stays the same when the training set grows.
    """
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    patient = index if patient is None else patient
    thorax = _sample_thorax(rng)
    frontal = _frontal_anatomy(thorax, rng)
    lateral = None
    sex = "Unknown" if rng.random() < 0.001 else ("Male" if rng.random() < 0.594 else "Female")
    age = 0 if rng.random() < 0.001 else int(np.clip(rng.normal(60, 18), 18, 88))
    rows, lesions, files = [], [], []
    for study in range(1, _studies_for_patient(rng, split) + 1):
        labels = sample_train_labels(rng) if split == "train" else sample_expert_labels(rng)
        for number, view in enumerate(_views_for_study(rng), start=1):
            relative = f"{split}/patient{patient:05d}/study{study}/view{number}_{view}.jpg"
            if view == "frontal":
                canvas = _draw_frontal_findings(labels, thorax, rng)
                picture = _compose(frontal, canvas, rng)
                ap_pa = AP_PA[int(rng.choice(len(AP_PA), p=AP_PA_SHARES))][0]
                lesions += [(f"{DATASET_FOLDER}/{relative}", name, *box) for name, box in canvas.lesions]
            else:
                if lateral is None:
                    lateral = _lateral_anatomy(rng)
                picture = _compose(lateral[0], _draw_lateral_findings(labels, lateral[1], rng), rng)
                ap_pa = ""
            files.append((relative, _encode(picture)))
            rows.append(
                {
                    "Path": f"{DATASET_FOLDER}/{relative}",
                    "Sex": sex,
                    "Age": age + (study - 1) // 3,
                    "Frontal/Lateral": view.capitalize(),
                    "AP/PA": ap_pa,
                    **labels,
                }
            )
    return rows, lesions, files


def _render_chunk(args: tuple[int, str, list[tuple[int, int]]]) -> list[tuple[list[dict], list[tuple], list[tuple]]]:
    seed, split, patients = args
    return [synthesize_patient(seed, split, index, patient) for index, patient in patients]


def _chunks(seed: int, split: str, patients: range, size: int = 8) -> Iterator[tuple[int, str, list[tuple[int, int]]]]:
    numbered = list(enumerate(patients, start=1))
    for start in range(0, len(numbered), size):
        yield seed, split, numbered[start : start + size]


@dataclass
class SynthesisSummary:
    root: Path
    images: dict[str, int]
    patients: dict[str, int]
    lesions: int


def synthesize(
    output: str | os.PathLike,
    num_patients: int = 200,
    *,
    valid_patients: int | None = None,
    test_patients: int = 0,
    seed: int = 0,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthesisSummary:
    """Write a synthetic CheXpert-v1.0-small tree under ``output``; returns where and how much.

    ``num_patients`` patients go to ``train`` (several studies each), ``valid_patients`` (default
    ``max(20, num_patients // 5)``) to ``valid`` and ``test_patients`` to ``test`` (one study each, expert-style
    0/1 labels; the test set is study-level ``groundtruth.csv`` as in the official release). The tree is
    built in a temporary folder and moved into place at the end, so an interrupted run leaves nothing.
    """
    if num_patients < 1:
        raise ValueError(f"num_patients must be at least 1, got {num_patients}")
    valid_patients = max(20, num_patients // 5) if valid_patients is None else valid_patients
    if valid_patients < 1 or test_patients < 0:
        raise ValueError("valid_patients must be at least 1 and test_patients at least 0")
    output = Path(output)
    final = output / DATASET_FOLDER
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; pass overwrite=True (--overwrite) to replace it")
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DATASET_FOLDER}.tmp-", dir=output))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; it is renamed into place as the tree's root
    splits = {
        "train": range(1, num_patients + 1),
        "valid": range(num_patients + 1, num_patients + valid_patients + 1),
        "test": range(num_patients + valid_patients + 1, num_patients + valid_patients + test_patients + 1),
    }
    images: dict[str, int] = {}
    lesion_rows: list[tuple] = []
    try:
        pool = multiprocessing.get_context("spawn").Pool(num_proc) if num_proc > 1 else None
        try:
            for split, patients in splits.items():
                if not len(patients):
                    continue
                jobs = _chunks(seed, split, patients)
                results = pool.imap(_render_chunk, jobs) if pool else map(_render_chunk, jobs)
                rows = []
                with tqdm(
                    total=len(patients), desc=f"synthesizing {split}", unit=" patients", disable=not progress
                ) as bar:
                    for chunk in results:
                        for patient_rows, patient_lesions, files in chunk:
                            for relative, data in files:
                                target = staging / relative
                                target.parent.mkdir(parents=True, exist_ok=True)
                                target.write_bytes(data)
                            rows += patient_rows
                            lesion_rows += patient_lesions
                        bar.update(len(chunk))
                images[split] = len(rows)
                if split == "test":
                    _write_groundtruth(staging / "groundtruth.csv", rows)
                else:
                    _write_csv(
                        staging / f"{split}.csv",
                        TRAIN_HEADER,
                        (
                            [
                                row["Path"],
                                row["Sex"],
                                row["Age"],
                                row["Frontal/Lateral"],
                                row["AP/PA"],
                                *(_format_label(row[name]) for name in CHEXPERT_LABELS),
                            ]
                            for row in rows
                        ),
                    )
        except BaseException:
            if pool is not None:
                pool.terminate()  # don't wait for the queued patients of a run that has already failed
            raise
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        _write_csv(staging / "lesions.csv", LESION_HEADER, lesion_rows)
        settings = {
            "generator_revision": GENERATOR_REVISION,
            "patients": num_patients,
            "valid_patients": valid_patients,
            "test_patients": test_patients,
            "seed": seed,
        }
        (staging / GENERATOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SynthesisSummary(
        root=final,
        images=images,
        patients={split: len(patients) for split, patients in splits.items() if len(patients)},
        lesions=len(lesion_rows),
    )


def generator_revision(root: str | os.PathLike) -> int | None:
    """The generator revision a synthetic tree (its ``CheXpert-v1.0-small`` folder) was written with; None for a
    tree older than the revision file or without one."""
    try:
        return int(json.loads((Path(root) / GENERATOR_FILE).read_text())["generator_revision"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _write_groundtruth(path: Path, rows: list[dict]) -> None:
    """Study-level labels as in the official test release: a ``Study`` column and 0/1 integers."""
    studies: dict[str, dict] = {}
    for row in rows:
        studies.setdefault(row["Path"].rsplit("/", 1)[0].split("/", 1)[1], row)
    _write_csv(
        path,
        ("Study", *CHEXPERT_LABELS),
        (
            [study, *(_format_label(row[name], integer=True) for name in CHEXPERT_LABELS)]
            for study, row in studies.items()
        ),
    )
