"""``chexpert-hf explain``: heatmaps of where a model looks, written as overlays, contact sheets and raw arrays, and
(with ``lesions.csv``) a check of whether they point at the findings.

For each image and requested label (one method):

* ``<image-stem>__<label_snake_case>.png`` — the radiograph with the heatmap blended on top, the label, the
  model's probability and the method in the corner (at least 256 px wide: small prepared images are enlarged);
* ``<image-stem>__sheet.png`` — the radiograph and every requested label's overlay side by side;
* ``heatmaps.npz`` — the maps keyed ``<image-stem>/<Label>``, float32 at the size of the image explained (an image
  file's own size, or a prepared split's stored size), scaled to [0, 1].

``<image-stem>`` is the file name without its extension, prefixed with patient and study for CheXpert paths
(``patient00001_study1_view1_frontal``) so that names stay unique; a repeated name gets ``-2``, ``-3`` ...
Several methods at once write one folder per method under the output folder. Everything is written to a staging
folder first and appears under its name only when complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from chexpert_hf.data.transforms import image_bytes
from chexpert_hf.explain.localization import (
    DEFAULT_TOLERANCE,
    Lesions,
    MethodTally,
    chance_hit_rate,
    image_key,
    pointing_hit,
    rank_correlations,
)
from chexpert_hf.explain.maps import (
    ROLLOUT,
    check_method,
    explanation_maps,
    model_family,
    randomized_copy,
    target_layer,
    to_size,
)
from chexpert_hf.labels import canonical_label
from chexpert_hf.utils import current_umask

logger = logging.getLogger(__name__)

HEATMAPS_NPZ = "heatmaps.npz"
LOCALIZATION_JSON = "localization.json"
PNG_COMPRESSION = 1  # zlib level: PNG encoding was most of a run's time at the default (6); files grow ~1.3x


@dataclass
class Radiograph:
    name: str  # unique file-name stem for the outputs
    key: str  # how it is matched to lesions.csv
    image: Image.Image  # 8-bit grey, as read (a file at its own size, a prepared image at its stored size)
    labels: np.ndarray | None = None  # raw labels (1/0/-1/NaN) in the model's label order, when known


def label_file_name(label: str) -> str:
    return label.lower().replace(" ", "_")


def output_stem(path: str) -> str:
    """``patient00001_study1_view1_frontal`` for a CheXpert path, else the file name without its extension."""
    key = image_key(path)
    parts = PurePosixPath(key).parts
    if len(parts) >= 3 and parts[-3].startswith("patient"):
        return "_".join((*parts[-3:-1], PurePosixPath(parts[-1]).stem))
    return PurePosixPath(str(path).replace("\\", "/")).stem


def unique_stems(paths: Sequence[str]) -> list[str]:
    """An output stem per path; a repeated one gets ``-2``, ``-3`` ... (never a name another path already has)."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem = output_stem(path)
        name, number = stem, 1
        while name in used:
            number += 1
            name = f"{stem}-{number}"
        used.add(name)
        names.append(name)
    return names


def read_image_files(paths: Sequence[str | os.PathLike]) -> tuple[list[Radiograph], list[str]]:
    """The readable images (decoded as ``predict`` decodes them) and one message per unreadable file."""
    from chexpert_hf.data.images import UnreadableImage, open_radiograph

    images, skipped, kept = [], [], []
    for path in paths:
        try:
            images.append(open_radiograph(str(path)))
            kept.append(str(path))
        except (UnreadableImage, OSError) as error:
            skipped.append(f"{path}: {error}" if str(path) not in str(error) else str(error))
    names = unique_stems(kept)
    return [Radiograph(name, image_key(path), image) for name, path, image in zip(names, kept, images, strict=True)], \
        skipped


def read_split(data: str | os.PathLike, model_labels: Sequence[str], *, split: str = "validation",
               num_images: int = 16, views: str = "frontal", prepare_image_size: int = 320) -> SplitImages:
    """The first ``num_images`` (0: all) images of a prepared split, with their raw labels."""
    from chexpert_hf.data.builder import label_names
    from chexpert_hf.data.loading import resolve_prepared
    from chexpert_hf.data.prepare import load_prepared
    from chexpert_hf.data.splits import frontal_only
    from chexpert_hf.labels import reorder_labels

    if views not in ("all", "frontal"):
        raise ValueError(f"views must be 'all' or 'frontal', got {views!r}")
    if num_images < 0:
        raise ValueError(f"--num-images must be 0 (all) or more, got {num_images}")
    dataset = load_prepared(resolve_prepared(data, image_size=prepare_image_size))
    if split not in dataset:
        raise ValueError(f"{data} has no {split!r} split; its splits are: {', '.join(dataset)}")
    rows = frontal_only(dataset[split]) if views == "frontal" else dataset[split]
    if num_images:
        rows = rows.select(range(min(num_images, len(rows))))
    if not len(rows):
        raise ValueError(f"the {split} split of {data} has no {'frontal ' if views == 'frontal' else ''}images")
    raw = reorder_labels(np.asarray(rows["labels"][:], dtype=np.float32), label_names(dataset), model_labels)
    return SplitImages(rows, raw)


class SplitImages(Sequence):
    """The images of a prepared split as :class:`Radiograph` items, decoded only when a slice is taken (a whole
    split is never held in memory at once)."""

    def __init__(self, rows, raw: np.ndarray):
        self.rows, self.raw = rows, raw
        self.paths = rows["path"][:]
        self.names = unique_stems(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, int):
            return self[index:index + 1][0]
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("only contiguous slices of a split are read")
        encoded = image_bytes(self.rows, start, stop) if stop > start else []
        out = []
        for position, data_bytes in zip(range(start, stop), encoded, strict=True):
            with Image.open(io.BytesIO(data_bytes)) as image:
                out.append(Radiograph(self.names[position], image_key(self.paths[position]), image.convert("L"),
                                      self.raw[position]))
        return out


def resolve_labels(model_labels: Sequence[str], requested: Sequence[str] | None) -> list[int]:
    """Indices of the requested labels in the model's outputs (all of them when none are requested)."""
    if not requested:
        return list(range(len(model_labels)))
    indices = []
    for name in requested:
        label = canonical_label(name)
        if label is None or label not in model_labels:
            raise ValueError(f"the model has no label {name!r}; its labels: {', '.join(model_labels)}")
        if model_labels.index(label) not in indices:
            indices.append(model_labels.index(label))
    return indices


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


class NpzWriter:
    """``np.savez_compressed`` one array at a time, so a long run never holds every map in memory."""

    def __init__(self, path: Path):
        self.archive = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self.keys: set[str] = set()

    def add(self, key: str, array: np.ndarray) -> None:
        if key in self.keys:
            raise ValueError(f"heatmap {key!r} written twice")
        self.keys.add(key)
        with self.archive.open(key + ".npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)

    def close(self) -> None:
        self.archive.close()  # closing twice is harmless


@dataclass
class ExplainResult:
    output: Path
    images: int
    maps: int
    localization: dict | None
    notes: list[str]


def _pixels(loaded, images: Sequence[Image.Image]) -> torch.Tensor:
    return loaded.processor(images=list(images), return_tensors="pt")["pixel_values"].to(loaded.device)


def _is_replaceable(folder: Path) -> bool:
    """What ``--overwrite`` may delete: an empty folder or an earlier ``explain`` output, nothing else."""
    entries = list(folder.iterdir())
    if not entries:
        return True
    markers = (HEATMAPS_NPZ, LOCALIZATION_JSON)
    return any((folder / name).is_file() for name in markers) or any(
        entry.is_dir() and (entry / HEATMAPS_NPZ).is_file() for entry in entries)


def _box_geometry(lesions: Lesions, item: Radiograph) -> tuple[tuple[int, int], tuple[float, float], bool] | None:
    """``(original size, scale to the explained image, whether the original was missing)`` for an image with lesion
    boxes; None for one without. Without its original file the boxes are taken to be in the explained pixels."""
    if item.key not in lesions.boxes:
        return None
    width, height = item.image.size
    original = lesions.original_size(item.key)
    missing = original is None
    original = original or (width, height)
    return original, (width / original[0], height / original[1]), missing


def check_output(output: str | os.PathLike, overwrite: bool, keep: Sequence[str | os.PathLike] = ()) -> Path:
    """The output folder, resolved, once it is safe to write (and with ``overwrite``, to replace): never the
    working directory or a folder above it, never a folder holding one of ``keep`` (the model, the data), and
    ``--overwrite`` replaces only an earlier explain output."""
    output = Path(output).expanduser().resolve()
    here = Path.cwd().resolve()
    if output == here or output in here.parents:
        raise ValueError(f"--output {output} is the working directory or above it; name a new folder")
    for path in keep:
        kept = Path(path).expanduser().resolve()
        if kept == output or output in kept.parents:
            raise ValueError(f"--output {output} holds {kept}, which explain reads; name a new folder")
    if output.exists():
        if not output.is_dir():
            raise FileExistsError(f"--output {output} is a file")
        if not overwrite:
            raise FileExistsError(f"{output} already exists; pass --overwrite to replace it")
        if not _is_replaceable(output):
            raise FileExistsError(f"--overwrite replaces an earlier explain output only, and {output} is not one "
                                  f"(no {HEATMAPS_NPZ}); name a new folder")
    return output


def _staging(output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the output is an ordinary folder
    return staging


def _check_processor(loaded) -> None:
    """Maps are put back over the image by squashing them to its size: that is right only for a processor that
    resizes the whole image to a square (every model this project trains), not for one that crops."""
    if loaded.square_resize() is None:
        raise ValueError(f"{loaded.source}'s image processor does not resize the whole image to a square (it crops, "
                         "pads or keeps the aspect ratio), so a map could not be placed back on the image; explain "
                         "supports squash-resizing processors such as those chexpert-hf saves")


def explain(loaded, radiographs: Sequence[Radiograph], output: str | os.PathLike, *,
            methods: Sequence[str] = ("gradcam",), labels: Sequence[str] | None = None, top_k: int | None = None,
            layer: str | None = None, lesions: Lesions | None = None, tolerance: float = DEFAULT_TOLERANCE,
            sanity_check: bool = False, batch_size: int = 8, seed: int = 0, overwrite: bool = False,
            progress: bool = True, keep: Sequence[str | os.PathLike] = ()) -> ExplainResult:
    """Explain ``radiographs`` with ``loaded`` (:func:`chexpert_hf.evaluation.inference.load_classifier`) and write
    the outputs into ``output`` (see :func:`check_output`; ``keep``: paths the output must not hold). With
    ``lesions`` (or ``sanity_check``) also score the maps (see :mod:`chexpert_hf.explain.localization`) and write
    ``localization.json``."""
    family = model_family(loaded.model)
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("no method given")
    for method in methods:
        check_method(family, method)
    if layer is not None:
        if all(method == ROLLOUT for method in methods):
            raise ValueError("--target-layer applies to gradcam and gradcam++; attention_rollout uses every layer")
        target_layer(family, layer)  # the error that lists the family's layers
    selected = resolve_labels(loaded.labels, labels)
    if top_k is not None:
        if labels:
            raise ValueError("give --labels or --top-k, not both")
        if not 1 <= top_k <= len(loaded.labels):
            raise ValueError(f"--top-k must be between 1 and {len(loaded.labels)} (the model's labels), got {top_k}")
        if lesions is not None:
            raise ValueError("--lesions scores every positive image of the requested labels; use --labels (or "
                             "nothing, for all labels) instead of --top-k")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if not tolerance >= 0:
        raise ValueError(f"--tolerance must be 0 or more pixels, got {tolerance}")
    if not len(radiographs):
        raise ValueError("no image to explain")
    _check_processor(loaded)
    output = check_output(output, overwrite, keep)
    sanity_check = sanity_check or lesions is not None
    staging = _staging(output)
    notes: list[str] = []
    writers: dict[str, NpzWriter] = {}
    try:
        folders = {method: staging / method if len(methods) > 1 else staging for method in methods}
        for folder in folders.values():
            folder.mkdir(exist_ok=True)
        writers = {method: NpzWriter(folders[method] / HEATMAPS_NPZ) for method in methods}
        tallies = {method: MethodTally(randomized=sanity_check) for method in methods}
        randomized = randomized_copy(loaded.model, seed) if sanity_check else None
        unscaled = 0
        maps_written = 0
        bar = tqdm(total=len(radiographs), desc="explaining", unit=" images", disable=not progress)
        for start in range(0, len(radiographs), batch_size):
            batch = radiographs[start:start + batch_size]
            pixels = _pixels(loaded, [item.image for item in batch])
            with torch.no_grad():
                probabilities = torch.sigmoid(loaded.model(pixel_values=pixels).logits.float()).cpu().numpy()
            if top_k is not None:
                chosen = [[int(i) for i in np.argsort(-row, kind="stable")[:top_k]] for row in probabilities]
            else:
                chosen = [selected] * len(batch)
            needed = sorted({index for indices in chosen for index in indices})
            column = {index: position for position, index in enumerate(needed)}
            # where each image's boxes were drawn: looked up once per image, whatever the number of methods
            geometry = [_box_geometry(lesions, item) for item in batch] if lesions is not None else [None] * len(batch)
            unscaled += sum(1 for entry in geometry if entry is not None and entry[2])
            for method in methods:
                method_layer = None if method == ROLLOUT else layer
                maps = explanation_maps(loaded.model, pixels, needed, method=method, layer=method_layer)
                random_maps = None
                if randomized is not None:
                    random_maps = explanation_maps(randomized, pixels, needed, method=method, layer=method_layer)
                for b, item in enumerate(batch):
                    width, height = item.image.size
                    overlays, titles = [], []
                    for index in chosen[b]:
                        label = loaded.labels[index]
                        heatmap = to_size(maps[b, column[index]], width, height)
                        writers[method].add(f"{item.name}/{label}", heatmap)
                        maps_written += 1
                        caption = f"{label}  p={probabilities[b, index]:.2f}  {method}"
                        overlay = render_overlay(item.image, heatmap, caption)
                        overlay.save(folders[method] / f"{item.name}__{label_file_name(label)}.png",
                                     compress_level=PNG_COMPRESSION)
                        overlays.append(overlay)
                        titles.append(f"{label}\np = {probabilities[b, index]:.2f}")
                        # rollout's map is one per image, whatever the label: compare it once
                        if random_maps is not None and (method != ROLLOUT or index == chosen[b][0]):
                            tallies[method].correlations.append(
                                rank_correlations(maps[b, column[index]], random_maps[b, column[index]]))
                        if lesions is None:
                            continue
                        boxes = lesions.for_image(item.key, label)
                        if not boxes:
                            continue
                        positive = item.labels[index] == 1 if item.labels is not None else \
                            lesions.positive(item.key, label)
                        if positive is False:
                            continue  # a box of an uncertain (-1) finding, drawn fainter: not a positive
                        original, scale, _ = geometry[b]
                        randomized_hit = None
                        if random_maps is not None:
                            randomized_hit = pointing_hit(to_size(random_maps[b, column[index]], width, height),
                                                          boxes, tolerance, scale)
                        tallies[method].labels[label].add(pointing_hit(heatmap, boxes, tolerance, scale),
                                                          chance_hit_rate(boxes, *original, tolerance),
                                                          randomized_hit, flat=heatmap.max() <= heatmap.min())
                    write_sheet(folders[method] / f"{item.name}__sheet.png", item.image, overlays, titles)
            bar.update(len(batch))
        bar.close()
        for writer in writers.values():
            writer.close()
        if unscaled:
            notes.append(f"{unscaled} image(s) whose original file was not found next to {lesions.path.name}: their "
                         "boxes were taken to be in the explained image's pixels")
        localization = None
        if sanity_check:
            if ROLLOUT in methods:
                notes.append("attention_rollout maps do not depend on the label")
            from chexpert_hf.evaluation.evaluate import _public_name

            localization = {
                "model": _public_name(loaded.source),
                "family": family,
                "images": len(radiographs),
                "tolerance_px": tolerance,
                "lesions": lesions.path.name if lesions is not None else None,
                "methods": {method: tallies[method].summary(loaded.labels) for method in methods},
                "notes": notes,
            }
            (staging / LOCALIZATION_JSON).write_text(json.dumps(localization, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExplainResult(output, len(radiographs), maps_written, localization, notes)


__all__ = ["ExplainResult", "Radiograph", "SplitImages", "check_output", "explain", "read_image_files", "read_split",
           "resolve_labels"]
