"""``chexpert-hf explain``: heatmaps of where a model looks, written as overlays, contact sheets and raw arrays, and
(with ``lesions.csv``) a check of whether they point at the findings.

For each image and requested label (one method):

* ``<image-stem>__<label_snake_case>.png`` — the radiograph with the heatmap blended on top, the label, the
  model's probability and the method in the corner (at least 256 px wide: small prepared images are enlarged);
* ``<image-stem>__sheet.png`` — the radiograph and every requested label's overlay side by side;
* ``heatmaps.npz`` — the maps keyed ``<image-stem>/<Label>``, float16 at the size of the image explained (an image
  file's own size, or a prepared split's stored size) shrunk to at most ``map_size`` pixels on the long side,
  scaled to [0, 1].

``overlays="sheets"`` draws the sheets only, ``"none"`` no pictures (the maps and scores are the same).

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
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from tqdm.auto import tqdm

from chexpert_hf.data.transforms import image_bytes
from chexpert_hf.explain.faithfulness import ROAD_PERCENTILES, FaithfulnessTally, road_scores
from chexpert_hf.explain.localization import (
    DEFAULT_TOLERANCE,
    Lesions,
    MethodTally,
    across_models,
    chance_hit_rate,
    image_key,
    pointing_hit,
    rank_correlations,
    score_label_specificity,
)
from chexpert_hf.explain.maps import (
    ATTENTION_METHODS,
    ROLLOUT,
    check_method,
    explanation_maps,
    model_family,
    randomized_copy,
    target_layer,
    to_size,
)
from chexpert_hf.explain.render import PNG_COMPRESSION, render_overlay, write_sheet
from chexpert_hf.labels import canonical_label
from chexpert_hf.outputs import HEATMAPS_NPZ, LOCALIZATION_JSON
from chexpert_hf.utils import current_umask

logger = logging.getLogger(__name__)

#: ``--overlays``: each label's overlay and every image's sheet, the sheets only, or no pictures at all.
OVERLAYS = ("all", "sheets", "none")


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
    return [
        Radiograph(name, image_key(path), image) for name, path, image in zip(names, kept, images, strict=True)
    ], skipped


def split_images(
    data: str | os.PathLike,
    model_labels: Sequence[str],
    *,
    split: str = "validation",
    num_images: int = 16,
    views: str = "frontal",
    prepare_image_size: int = 320,
) -> SplitImages:
    """The first ``num_images`` (0: all) images of a prepared split, with their raw labels, read as ``evaluate``
    reads a split (:func:`chexpert_hf.data.loading.load_prepared_split`)."""
    from chexpert_hf.data.loading import check_views, load_prepared_split

    check_views(views)
    if num_images < 0:
        raise ValueError(f"--num-images must be 0 (all) or more, got {num_images}")
    part = load_prepared_split(
        data, list(model_labels), split=split, views=views, limit=num_images, image_size=prepare_image_size
    )
    return SplitImages(part.rows, part.raw)


read_split = split_images  # the name chexpert_hf.cli.main still imports; chexpert_csv.read_split reads a CSV


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
            return self[index : index + 1][0]
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("only contiguous slices of a split are read")
        encoded = image_bytes(self.rows, start, stop) if stop > start else []
        out = []
        for position, data_bytes in zip(range(start, stop), encoded, strict=True):
            with Image.open(io.BytesIO(data_bytes)) as image:
                out.append(
                    Radiograph(
                        self.names[position], image_key(self.paths[position]), image.convert("L"), self.raw[position]
                    )
                )
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


DEFAULT_MAP_SIZE = 512  # heatmaps.npz keeps maps at most this many pixels on the long side, unless --full-size


def stored_size(width: int, height: int, map_size: int | None) -> tuple[int, int]:
    """``(width, height)`` of a map as ``heatmaps.npz`` stores it: the image's own size, shrunk (aspect kept) so
    that the long side is at most ``map_size``; None keeps the full size."""
    long_side = max(width, height)
    if map_size is None or long_side <= map_size:
        return width, height
    return max(1, round(width * map_size / long_side)), max(1, round(height * map_size / long_side))


class NpzWriter:
    """``np.savez_compressed`` one array at a time, so a long run never holds every map in memory. Maps are stored
    as float16 (a [0, 1] map needs no more than its 3 decimal digits) at most ``map_size`` pixels on the long side
    (None: the image's full size)."""

    def __init__(self, path: Path, map_size: int | None = DEFAULT_MAP_SIZE):
        self.archive = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self.keys: set[str] = set()
        self.map_size = map_size

    def add(self, key: str, array: np.ndarray) -> None:
        if key in self.keys:
            raise ValueError(f"heatmap {key!r} written twice")
        self.keys.add(key)
        array = np.asarray(array, dtype=np.float32)
        height, width = array.shape
        size = stored_size(width, height, self.map_size)
        if size != (width, height):  # area-averaged (antialiased), not re-stretched: the values stay the map's
            tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
            array = F.interpolate(tensor, size=size[::-1], mode="bilinear", antialias=True, align_corners=False)
            array = np.clip(array[0, 0].numpy(), 0.0, 1.0)
        with self.archive.open(key + ".npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array(handle, array.astype(np.float16), allow_pickle=False)

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
        entry.is_dir() and (entry / HEATMAPS_NPZ).is_file() for entry in entries
    )


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
            raise FileExistsError(
                f"--overwrite replaces an earlier explain output only, and {output} is not one "
                f"(no {HEATMAPS_NPZ}); name a new folder"
            )
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
        raise ValueError(
            f"{loaded.source}'s image processor does not resize the whole image to a square (it crops, "
            "pads or keeps the aspect ratio), so a map could not be placed back on the image; explain "
            "supports squash-resizing processors such as those chexpert-hf saves"
        )


def explain(
    loaded,
    radiographs: Sequence[Radiograph],
    output: str | os.PathLike,
    *,
    methods: Sequence[str] = ("gradcam",),
    labels: Sequence[str] | None = None,
    top_k: int | None = None,
    layer: str | None = None,
    lesions: Lesions | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    sanity_check: bool = False,
    batch_size: int = 8,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    keep: Sequence[str | os.PathLike] = (),
    map_size: int | None = DEFAULT_MAP_SIZE,
    road_images: int = 0,
    overlays: str = "all",
) -> ExplainResult:
    """Explain ``radiographs`` with ``loaded`` (:func:`chexpert_hf.evaluation.inference.load_classifier`) and write
    the outputs into ``output`` (see :func:`check_output`; ``keep``: paths the output must not hold). With
    ``lesions`` (or ``sanity_check``) also score the maps (see :mod:`chexpert_hf.explain.localization`) and write
    ``localization.json``. ``heatmaps.npz`` keeps float16 maps at most ``map_size`` pixels on the long side (None:
    the image's size). ``overlays``: which pictures are drawn: ``all`` (each label's overlay and the image's sheet),
    ``sheets`` (the sheets only) or ``none`` (only the maps and the scores)."""
    family = model_family(loaded.model)
    if map_size is not None and map_size < 1:
        raise ValueError(f"--map-size must be at least 1 pixel, got {map_size}")
    if road_images < 0:
        raise ValueError(f"--road-images must be 0 (off) or more, got {road_images}")
    if overlays not in OVERLAYS:
        raise ValueError(f"--overlays must be one of {', '.join(OVERLAYS)}, got {overlays!r}")
    methods = list(dict.fromkeys(methods))
    selected = _check_request(loaded, family, methods, labels, top_k, layer, lesions)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if not tolerance >= 0:
        raise ValueError(f"--tolerance must be 0 or more pixels, got {tolerance}")
    if not len(radiographs):
        raise ValueError("no image to explain")
    _check_processor(loaded)
    output = check_output(output, overwrite, keep)
    scored = sanity_check or lesions is not None or road_images > 0  # localization.json is written
    sanity_check = sanity_check or lesions is not None
    staging = _staging(output)
    writers: dict[str, NpzWriter] = {}
    try:
        folders = {method: staging / method if len(methods) > 1 else staging for method in methods}
        for folder in folders.values():
            folder.mkdir(exist_ok=True)
        writers = {method: NpzWriter(folders[method] / HEATMAPS_NPZ, map_size) for method in methods}
        session = _Session(
            loaded,
            methods,
            layer,
            selected,
            top_k,
            lesions,
            tolerance,
            folders,
            writers,
            tallies={method: MethodTally(randomized=sanity_check) for method in methods},
            randomized=randomized_copy(loaded.model, seed) if sanity_check else None,
            road_images=road_images,
            overlays=overlays,
        )
        bar = tqdm(total=len(radiographs), desc="explaining", unit=" images", disable=not progress)
        for start in range(0, len(radiographs), batch_size):
            batch = radiographs[start : start + batch_size]
            _explain_batch(session, batch)
            bar.update(len(batch))
        bar.close()
        localization, notes = _write_outputs(session, staging, output, family, len(radiographs), scored)
    except BaseException:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExplainResult(output, len(radiographs), session.maps_written, localization, notes)


def _check_request(
    loaded,
    family: str,
    methods: Sequence[str],
    labels: Sequence[str] | None,
    top_k: int | None,
    layer: str | None,
    lesions: Lesions | None,
) -> list[int]:
    """Refuse a request the model cannot answer before anything is computed; the selected label indices."""
    if not methods:
        raise ValueError("no method given")
    for method in methods:
        check_method(family, method)
    if layer is not None:
        if all(method in ATTENTION_METHODS for method in methods):
            raise ValueError(
                f"--target-layer applies to gradcam and gradcam++; {' and '.join(methods)} use(s) every layer"
            )
        target_layer(family, layer)  # the error that lists the family's layers
    selected = resolve_labels(loaded.labels, labels)
    if top_k is not None:
        if labels:
            raise ValueError("give --labels or --top-k, not both")
        if not 1 <= top_k <= len(loaded.labels):
            raise ValueError(f"--top-k must be between 1 and {len(loaded.labels)} (the model's labels), got {top_k}")
        if lesions is not None:
            raise ValueError(
                "--lesions scores every positive image of the requested labels; use --labels (or "
                "nothing, for all labels) instead of --top-k"
            )
    return selected


@dataclass
class _Session:
    """What every batch of one :func:`explain` call shares: the request, where each method writes, the tallies."""

    loaded: Any
    methods: list[str]
    layer: str | None
    selected: list[int]
    top_k: int | None
    lesions: Lesions | None
    tolerance: float
    folders: dict[str, Path]  # method -> the folder its files go to
    writers: dict[str, NpzWriter]
    tallies: dict[str, MethodTally]
    randomized: Any  # the model with re-initialised weights (sanity check), or None
    unscaled: int = 0  # images with boxes whose original file was not found
    maps_written: int = 0
    road_images: int = 0  # how many images get the ROAD faithfulness score (the first ones)
    road_done: dict[str, int] = field(default_factory=dict)  # method -> images scored so far
    road: dict[str, dict[str, FaithfulnessTally]] = field(default_factory=dict)  # method -> label -> tally
    overlays: str = "all"  # which pictures are drawn (OVERLAYS)


def _explain_batch(session: _Session, batch: Sequence[Radiograph]) -> None:
    """One forward pass for the probabilities, then each method's maps for the labels any image of the batch needs."""
    loaded, lesions = session.loaded, session.lesions
    pixels = _pixels(loaded, [item.image for item in batch])
    with torch.no_grad():
        probabilities = torch.sigmoid(loaded.model(pixel_values=pixels).logits.float()).cpu().numpy()
    if session.top_k is not None:
        chosen = [[int(i) for i in np.argsort(-row, kind="stable")[: session.top_k]] for row in probabilities]
    else:
        chosen = [session.selected] * len(batch)
    needed = sorted({index for indices in chosen for index in indices})
    column = {index: position for position, index in enumerate(needed)}
    # where each image's boxes were drawn: looked up once per image, whatever the number of methods
    geometry = [_box_geometry(lesions, item) for item in batch] if lesions is not None else [None] * len(batch)
    session.unscaled += sum(1 for entry in geometry if entry is not None and entry[2])
    for method in session.methods:
        method_layer = None if method in ATTENTION_METHODS else session.layer  # every layer: no target layer
        maps = explanation_maps(loaded.model, pixels, needed, method=method, layer=method_layer)
        random_maps = None
        if session.randomized is not None:
            random_maps = explanation_maps(session.randomized, pixels, needed, method=method, layer=method_layer)
        _score_faithfulness(session, method, pixels, maps, needed)
        for b, item in enumerate(batch):
            _explain_image(
                session,
                method,
                item,
                chosen[b],
                probabilities[b],
                maps[b],
                None if random_maps is None else random_maps[b],
                column,
                geometry[b],
            )


def _score_faithfulness(session: _Session, method: str, pixels: torch.Tensor, maps: np.ndarray, needed) -> None:
    """ROAD (most and least relevant first) on the batch's images while the ``road_images`` budget lasts."""
    done = session.road_done.get(method, 0)
    take = min(session.road_images - done, len(pixels))
    if take <= 0:
        return
    scores = road_scores(session.loaded.model, pixels[:take], maps[:take], needed)
    tallies = session.road.setdefault(method, {})
    for column, index in enumerate(needed):
        label = session.loaded.labels[index]
        tallies.setdefault(label, FaithfulnessTally()).add(
            {key: value[:, column : column + 1] for key, value in scores.items()}
        )
    session.road_done[method] = done + take


def _explain_image(
    session: _Session,
    method: str,
    item: Radiograph,
    chosen: Sequence[int],
    probabilities: np.ndarray,
    maps: np.ndarray,
    random_maps: np.ndarray | None,
    column: dict[int, int],
    geometry,
) -> None:
    """One image, one method: each chosen label's map into the archive and its overlay, the sheet, the scores
    (``maps``: the image's maps, one per needed label, ``column`` says which)."""
    width, height = item.image.size
    folder = session.folders[method]
    overlays, titles = [], []
    heatmaps: dict[int, np.ndarray] = {}  # label index -> its map at the image's size
    for index in chosen:
        label = session.loaded.labels[index]
        # at float16's precision from here on, as heatmaps.npz stores it: what is scored is what is kept
        heatmap = heatmaps[index] = to_size(maps[column[index]], width, height).astype(np.float16).astype(np.float32)
        session.writers[method].add(f"{item.name}/{label}", heatmap)
        session.maps_written += 1
        if session.overlays != "none":
            overlay = render_overlay(item.image, heatmap, f"{label}  p={probabilities[index]:.2f}  {method}")
            if session.overlays == "all":
                overlay.save(folder / f"{item.name}__{label_file_name(label)}.png", compress_level=PNG_COMPRESSION)
            overlays.append(overlay)
            titles.append(f"{label}\np = {probabilities[index]:.2f}")
        random_map = None if random_maps is None else random_maps[column[index]]
        # rollout's map is one per image, whatever the label: compare it once
        if random_map is not None and (method != ROLLOUT or index == chosen[0]):
            session.tallies[method].correlations.append(rank_correlations(maps[column[index]], random_map))
        if session.lesions is not None:
            _score_pointing(session, method, item, index, heatmap, random_map, geometry)
    if session.lesions is not None and geometry is not None:
        _score_specificity(session, method, item, heatmaps, geometry)
    if session.overlays == "none":
        return
    header, boxes = _sheet_header(session, item), _sheet_boxes(session, item, chosen, geometry)
    write_sheet(folder / f"{item.name}__sheet.png", item.image, overlays, titles, header=header, boxes=boxes)


def _sheet_header(session: _Session, item: Radiograph) -> str:
    """The image's labels as the sheet's first line: ground truth where the split gives it."""
    if item.labels is None:
        return "ground truth: not known (image files)"
    labels = session.loaded.labels
    positive = [label for label, value in zip(labels, item.labels, strict=True) if value == 1]
    uncertain = [label for label, value in zip(labels, item.labels, strict=True) if value == -1]
    text = f"ground truth: {', '.join(positive) if positive else 'no finding among the labels'}"
    return text + (f"; uncertain: {', '.join(uncertain)}" if uncertain else "")


def _sheet_boxes(session: _Session, item: Radiograph, chosen: Sequence[int], geometry) -> list[list] | None:
    """Lesion boxes for each sheet panel in the explained image's pixels: every box on the radiograph, each label's
    own on its overlay; None without ``--lesions``."""
    if session.lesions is None or geometry is None:
        return None
    sx, sy = geometry[1]

    def scaled(label: str) -> list[tuple[float, float, float, float]]:
        return [(b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy) for b in session.lesions.for_image(item.key, label)]

    every = [box for label in session.loaded.labels for box in scaled(label)]
    return [every, *(scaled(session.loaded.labels[index]) for index in chosen)]


def _score_specificity(
    session: _Session, method: str, item: Radiograph, heatmaps: dict[int, np.ndarray], geometry
) -> None:
    """Label specificity of the image's maps (``heatmaps``: the labels explained for it, at its size), on the
    positive findings with boxes (see :func:`chexpert_hf.explain.localization.score_label_specificity`)."""
    finding_maps, finding_boxes = {}, {}
    for index, heatmap in heatmaps.items():
        boxes = _positive_boxes(session, item, index)
        if boxes:
            label = session.loaded.labels[index]
            finding_maps[label] = heatmap
            finding_boxes[label] = boxes
    if len(finding_maps) < 2:
        return
    hits, correlations = score_label_specificity(finding_maps, finding_boxes, session.tolerance, geometry[1])
    session.tallies[method].add_specificity(hits, correlations)


def _positive_boxes(session: _Session, item: Radiograph, index: int) -> list:
    """The boxes of label ``index`` on the image when that finding is positive there (a box of an uncertain finding,
    drawn fainter, is not a positive); empty otherwise."""
    label = session.loaded.labels[index]
    boxes = session.lesions.for_image(item.key, label)
    if not boxes:
        return []
    positive = item.labels[index] == 1 if item.labels is not None else session.lesions.positive(item.key, label)
    return [] if positive is False else boxes


def _score_pointing(
    session: _Session, method: str, item: Radiograph, index: int, heatmap: np.ndarray, random_map, geometry
) -> None:
    """The pointing game for one (image, label) with boxes of a positive finding, into the method's tally."""
    label = session.loaded.labels[index]
    boxes = _positive_boxes(session, item, index)
    if not boxes:
        return
    original, scale, _ = geometry
    width, height = item.image.size
    randomized_hit = None
    if random_map is not None:
        randomized_hit = pointing_hit(to_size(random_map, width, height), boxes, session.tolerance, scale)
    session.tallies[method].labels[label].add(
        pointing_hit(heatmap, boxes, session.tolerance, scale),
        chance_hit_rate(boxes, *original, session.tolerance),
        randomized_hit,
        flat=heatmap.max() <= heatmap.min(),
    )


def _write_outputs(
    session: _Session, staging: Path, output: Path, family: str, images: int, sanity_check: bool
) -> tuple[dict | None, list[str]]:
    """Close the archives, write ``localization.json`` (with scores), then put the staging folder in place of
    ``output``; the localization summary (None without scores) and the notes."""
    for writer in session.writers.values():
        writer.close()
    notes: list[str] = []
    if session.unscaled:
        notes.append(
            f"{session.unscaled} image(s) whose original file was not found next to "
            f"{session.lesions.path.name}: their boxes were taken to be in the explained image's pixels"
        )
    localization = None
    if sanity_check:
        if ROLLOUT in session.methods:
            notes.append("attention_rollout maps do not depend on the label")
        from chexpert_hf.evaluation.evaluate import _public_name

        localization = {
            "model": _public_name(session.loaded.source),
            "family": family,
            "images": images,
            "tolerance_px": session.tolerance,
            "lesions": session.lesions.path.name if session.lesions is not None else None,
            "methods": {method: session.tallies[method].summary(session.loaded.labels) for method in session.methods},
            "notes": notes,
        }
        for method, tallies in session.road.items():
            localization["methods"][method]["faithfulness"] = {
                "metric": "ROAD (pytorch-grad-cam), logit change averaged over percentiles "
                + ", ".join(str(p) for p in ROAD_PERCENTILES),
                "images": session.road_done.get(method, 0),
                "per_label": {label: tally.summary([label])[label] for label, tally in tallies.items()},
            }
        (staging / LOCALIZATION_JSON).write_text(json.dumps(localization, indent=2) + "\n")
    if output.exists():
        shutil.rmtree(output)
    os.replace(staging, output)
    return localization, notes


def model_names(models: Sequence[str]) -> list[str]:
    """A folder name per model (its own folder's name, or the Hub id's last part), made unique with -2, -3 ..."""
    names: list[str] = []
    for model in models:
        path = Path(model)
        base = path.resolve().name if path.exists() else str(model).rstrip("/").split("/")[-1]
        name, number = base, 2
        while name in names:
            name, number = f"{base}-{number}", number + 1
        names.append(name)
    return names


def explain_models(
    load: Any,
    models: Sequence[str],
    radiographs: Sequence[Radiograph],
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    keep: Sequence[str | os.PathLike] = (),
    **options: Any,
) -> tuple[dict | None, list[ExplainResult]]:
    """Explain the same images with several models (the seeds of one recipe, a benchmark's runs): each model's
    full output in ``output/<model name>/`` (:func:`explain`, with ``options``), and, when the maps are scored,
    ``output/localization.json`` with every method and label as mean ± std over the models
    (:func:`chexpert_hf.explain.localization.across_models`). ``load(model)`` loads one model; one at a time is
    in memory. The folder appears only when every model is done."""
    output = check_output(output, overwrite, keep)
    staging = _staging(output)
    results: list[ExplainResult] = []
    try:
        for model, name in zip(models, model_names(models), strict=True):
            loaded = load(model)
            results.append(explain(loaded, radiographs, staging / name, keep=keep, **options))
            del loaded
        summary = None
        if all(result.localization is not None for result in results):
            scored = {result.output.name: result.localization for result in results}
            summary = across_models(scored)
            (staging / LOCALIZATION_JSON).write_text(json.dumps(summary, indent=2) + "\n")
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for result in results:  # where each model's output now is
        result.output = output / result.output.name
    return summary, results


__all__ = [
    "ExplainResult",
    "Radiograph",
    "SplitImages",
    "check_output",
    "explain",
    "explain_models",
    "read_image_files",
    "read_split",
    "resolve_labels",
    "split_images",
]
