"""Do the maps mean something? The pointing game against known lesion boxes, and the model-randomization check.

* Pointing game (Zhang et al., 2016): a map hits when its maximum falls inside a box of that finding, grown by a
  tolerance (15 px by default, as in the original). Coarse maps upsampled from a few tokens have flat maxima; the
  peak is then the maximal pixel nearest to the centroid of all maximal pixels.
* A uniform-random map's maximum falls on a uniformly random pixel, so its expected hit rate is exactly the share
  of the image that the grown boxes cover: the chance level every method must clearly beat.
* Model randomization (Adebayo et al., 2018): maps of the same images and labels from the model with its weights
  re-initialised must differ clearly from the trained model's; the difference is measured by the rank (Spearman)
  correlation of the two maps, near 1 for a method that ignores the weights.

* Label specificity, on images with boxes of two or more positive findings: the *wrong-label* pointing game
  scores label A's map against the boxes of every other finding B of the image, a baseline for the right-label hit
  rate on the same images (a map that points at whatever lesion is most visible scores as well on the wrong label);
  and the rank correlation between the maps of two labels of the same image, 1 when the method ignores the label
  (attention rollout, always).

``lesions.csv`` (``path,label,x0,y0,x1,y1``, written by ``chexpert-hf synthesize``) gives each box in the pixels
of the image file named by ``path``.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from scipy.stats import rankdata

from chexpert_hf.data.chexpert_csv import CheXpertFormatError
from chexpert_hf.labels import canonical_label

LESION_COLUMNS = ("path", "label", "x0", "y0", "x1", "y1")
DEFAULT_TOLERANCE = 15.0  # pixels of the original image, as in the pointing game's original definition
_PATIENT = re.compile(r"patient\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def contains(self, x: float, y: float, tolerance: float) -> bool:
        return (self.x0 - tolerance <= x <= self.x1 + tolerance) and (self.y0 - tolerance <= y <= self.y1 + tolerance)


def image_key(path: str | os.PathLike) -> str:
    """How an image is matched to ``lesions.csv``: ``split/patientN/studyN/file`` for a CheXpert path (with or
    without the dataset folder, absolute or not), else the file name."""
    parts = PurePosixPath(str(path).replace("\\", "/")).parts
    for index in range(len(parts) - 1, -1, -1):
        if _PATIENT.match(parts[index]):
            return "/".join(parts[max(0, index - 1) :]).lower()
    return parts[-1].lower() if parts else ""


@dataclass
class Lesions:
    """Boxes by image key and label, and where each image's file is (to scale boxes to a resized copy)."""

    path: Path
    boxes: dict[str, dict[str, list[Box]]]
    files: dict[str, str]  # image key → the path column as written
    _labels: dict[str, dict[str, str]] | None = None

    def for_image(self, key: str, label: str) -> list[Box]:
        return self.boxes.get(key, {}).get(label, [])

    def positive(self, key: str, label: str) -> bool | None:
        """Whether the image's ``label`` is 1 in the split CSVs next to ``lesions.csv`` (``train.csv``,
        ``valid.csv``; uncertain findings have boxes too, drawn fainter), or None when no CSV lists the image."""
        if self._labels is None:
            self._labels = {}
            for name in ("train.csv", "valid.csv"):
                if (self.path.parent / name).is_file():
                    with (self.path.parent / name).open(newline="") as handle:
                        for row in csv.DictReader(handle):
                            if row.get("Path"):
                                self._labels[image_key(row["Path"])] = row
        row = self._labels.get(key)
        if row is None:
            return None
        try:
            return float(row.get(label) or "nan") == 1.0
        except ValueError:
            return False

    def original_size(self, key: str) -> tuple[int, int] | None:
        """``(width, height)`` of the image file the boxes were drawn on, when it can be found next to the CSV
        (``lesions.csv`` sits in ``CheXpert-v1.0-small``, and its paths start with that folder)."""
        from PIL import Image

        relative = self.files.get(key)
        if relative is None:
            return None
        for base in (self.path.parent.parent, self.path.parent):
            candidate = base / relative
            if candidate.is_file():
                with Image.open(candidate) as image:
                    return image.size
        stripped = PurePosixPath(relative).parts[1:]
        candidate = self.path.parent.joinpath(*stripped) if stripped else None
        if candidate is not None and candidate.is_file():
            with Image.open(candidate) as image:
                return image.size
        return None


def read_lesions(path: str | os.PathLike) -> Lesions:
    """Parse ``lesions.csv``; a missing column, unknown label or bad coordinate is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lesion boxes file not found: {path}")
    boxes: dict[str, dict[str, list[Box]]] = defaultdict(lambda: defaultdict(list))
    files: dict[str, str] = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in LESION_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise CheXpertFormatError(
                f"{path}: missing column(s) {missing}; the header must hold "
                f"{', '.join(LESION_COLUMNS)} (it is {reader.fieldnames})"
            )
        for line, row in enumerate(reader, start=2):
            label = canonical_label(row["label"] or "")
            if label is None:
                raise CheXpertFormatError(f"{path}, line {line}: unknown label {row['label']!r}")
            try:
                x0, y0, x1, y1 = (float(row[column]) for column in ("x0", "y0", "x1", "y1"))
            except (TypeError, ValueError):
                raise CheXpertFormatError(
                    f"{path}, line {line}: box coordinates must be numbers, got "
                    f"{[row[c] for c in ('x0', 'y0', 'x1', 'y1')]}"
                ) from None
            if not all(np.isfinite([x0, y0, x1, y1])) or x1 < x0 or y1 < y0:
                raise CheXpertFormatError(f"{path}, line {line}: not a box (x0 <= x1, y0 <= y1): {(x0, y0, x1, y1)}")
            key = image_key(row["path"])
            boxes[key][label].append(Box(x0, y0, x1, y1))
            files[key] = row["path"]
    return Lesions(path, {key: dict(value) for key, value in boxes.items()}, files)


def peak(heatmap: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the map's maximum: of all maximal pixels, the one nearest their centroid."""
    rows, cols = np.nonzero(heatmap >= heatmap.max())
    if len(rows) == 1:
        return float(cols[0]), float(rows[0])
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return float(cols[nearest]), float(rows[nearest])


def pointing_hit(
    heatmap: np.ndarray,
    boxes: Iterable[Box],
    tolerance: float = DEFAULT_TOLERANCE,
    scale: tuple[float, float] = (1.0, 1.0),
) -> bool:
    """Whether the map's maximum is inside any of the boxes grown by ``tolerance`` pixels (never for a flat map,
    which has no maximum to point with). Boxes and tolerance are
    in the pixels of the image the boxes were drawn on; ``scale`` is (map width / that width, map height / that
    height) when the map is of a resized copy."""
    if heatmap.max() <= heatmap.min():
        return False  # a flat map (no evidence anywhere, e.g. Grad-CAM after its ReLU) points nowhere
    x, y = peak(heatmap)
    x, y = (x + 0.5) / scale[0] - 0.5, (y + 0.5) / scale[1] - 0.5  # pixel centres map to pixel centres
    return any(box.contains(x, y, tolerance) for box in boxes)


def chance_hit_rate(boxes: Iterable[Box], width: int, height: int, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """Expected hit rate of a map whose maximum is a uniformly random pixel: the share of pixels inside the grown
    boxes (their union)."""
    inside = np.zeros((height, width), dtype=bool)
    for box in boxes:
        x0, y0 = max(0, int(np.ceil(box.x0 - tolerance))), max(0, int(np.ceil(box.y0 - tolerance)))
        x1, y1 = min(width - 1, int(np.floor(box.x1 + tolerance))), min(height - 1, int(np.floor(box.y1 + tolerance)))
        if x1 >= x0 and y1 >= y0:
            inside[y0 : y1 + 1, x0 : x1 + 1] = True
    return float(inside.mean())


def rank_correlations(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman correlation of each pair of maps (leading axes paired, the last two flattened); NaN where either
    map is constant (no ranking to compare)."""
    a = first.reshape(-1, first.shape[-2] * first.shape[-1]).astype(np.float64)
    b = second.reshape(-1, second.shape[-2] * second.shape[-1]).astype(np.float64)
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=1) / denominator, np.nan)


@dataclass
class LabelTally:
    positives: int = 0
    hits: int = 0
    randomized_hits: int = 0
    chance: float = 0.0  # summed expected hits of a uniform-random map
    flat: int = 0  # maps with no maximum (scored as misses)

    def add(self, hit: bool, chance: float, randomized_hit: bool | None, flat: bool = False) -> None:
        self.positives += 1
        self.hits += int(hit)
        self.chance += chance
        self.randomized_hits += int(bool(randomized_hit))
        self.flat += int(flat)


@dataclass
class SpecificityTally:
    """Label specificity for one label on the images with boxes of two or more positive findings: its map against
    its own boxes (right) and against each other finding's boxes (wrong, one trial per other finding)."""

    images: int = 0
    right_hits: int = 0
    wrong_trials: int = 0
    wrong_hits: int = 0


def score_label_specificity(
    maps: dict[str, np.ndarray],
    boxes: dict[str, list[Box]],
    tolerance: float = DEFAULT_TOLERANCE,
    scale: tuple[float, float] = (1.0, 1.0),
) -> tuple[dict[str, tuple[bool, list[bool]]], list[float]]:
    """One image's label specificity: for each label with a map and boxes, ``(right hit, [wrong hits])`` — its map
    against its own boxes and against each other finding's — and the rank correlation of every pair of those maps.
    Empty unless at least two findings have both a map and boxes."""
    findings = [label for label in maps if boxes.get(label)]
    if len(findings) < 2:
        return {}, []
    hits = {
        label: (
            pointing_hit(maps[label], boxes[label], tolerance, scale),
            [pointing_hit(maps[label], boxes[other], tolerance, scale) for other in findings if other != label],
        )
        for label in findings
    }
    pairs = [(a, b) for i, a in enumerate(findings) for b in findings[i + 1 :]]
    correlations = [float(rank_correlations(maps[a], maps[b])[0]) for a, b in pairs]
    return hits, correlations


@dataclass
class MethodTally:
    """Pointing-game counts per label, the rank correlations with the randomized model, and label specificity, for
    one method."""

    labels: dict[str, LabelTally] = field(default_factory=lambda: defaultdict(LabelTally))
    correlations: list[np.ndarray] = field(default_factory=list)
    randomized: bool = False
    specificity: dict[str, SpecificityTally] = field(default_factory=lambda: defaultdict(SpecificityTally))
    between_labels: list[float] = field(default_factory=list)  # rank correlations of two labels' maps, one image
    multi_finding_images: int = 0

    def add_specificity(self, hits: dict[str, tuple[bool, list[bool]]], correlations: Sequence[float]) -> None:
        if not hits:
            return
        self.multi_finding_images += 1
        for label, (right, wrong) in hits.items():
            tally = self.specificity[label]
            tally.images += 1
            tally.right_hits += int(right)
            tally.wrong_trials += len(wrong)
            tally.wrong_hits += sum(wrong)
        self.between_labels.extend(correlations)

    def specificity_summary(self, label_order: Sequence[str]) -> dict:
        """``label_specificity`` of localization.json: per label and over all, right- and wrong-label hit rates on
        the images with two or more findings, and the mean rank correlation between labels' maps."""
        per_label = {}
        for label in label_order:
            tally = self.specificity.get(label)
            if tally is None or not tally.images:
                continue
            per_label[label] = {
                "images": tally.images,
                "right_label_hit_rate": tally.right_hits / tally.images,
                "wrong_label_hit_rate": tally.wrong_hits / tally.wrong_trials,
            }
        finite = [value for value in self.between_labels if np.isfinite(value)]
        right = sum(t.right_hits for t in self.specificity.values())
        images = sum(t.images for t in self.specificity.values())
        trials = sum(t.wrong_trials for t in self.specificity.values())
        return {
            "images": self.multi_finding_images,
            "right_label_hit_rate": right / images if images else None,
            "wrong_label_hit_rate": sum(t.wrong_hits for t in self.specificity.values()) / trials if trials else None,
            "spearman_between_labels_mean": float(np.mean(finite)) if finite else None,
            "label_pairs": len(self.between_labels),
            "per_label": per_label,
        }

    def summary(self, label_order: Sequence[str]) -> dict:
        per_label = {}
        for label in label_order:
            tally = self.labels.get(label)
            if tally is None or not tally.positives:
                continue
            entry = {
                "positives": tally.positives,
                "hits": tally.hits,
                "hit_rate": tally.hits / tally.positives,
                "uniform_random_hit_rate": tally.chance / tally.positives,
                "flat_maps": tally.flat,
            }
            if self.randomized:
                entry["randomized_model_hit_rate"] = tally.randomized_hits / tally.positives
            per_label[label] = entry
        out: dict = {"per_label": per_label}
        if per_label:
            positives = sum(entry["positives"] for entry in per_label.values())
            out["positives"] = positives
            out["hit_rate"] = sum(entry["hits"] for entry in per_label.values()) / positives
            out["mean_hit_rate"] = float(np.mean([entry["hit_rate"] for entry in per_label.values()]))
            out["uniform_random_hit_rate"] = sum(self.labels[k].chance for k in per_label) / positives
            if self.randomized:
                out["randomized_model_hit_rate"] = sum(self.labels[k].randomized_hits for k in per_label) / positives
        if self.randomized:
            values = np.concatenate(self.correlations) if self.correlations else np.empty(0)
            finite = values[np.isfinite(values)]
            out["randomization"] = {
                "maps": int(values.size),
                "constant_maps": int(values.size - finite.size),
                "spearman_mean": float(finite.mean()) if finite.size else None,
                "spearman_median": float(np.median(finite)) if finite.size else None,
            }
        if self.multi_finding_images:
            out["label_specificity"] = self.specificity_summary(label_order)
        return out


def localization_text(summary: dict) -> str:
    """The pointing game and randomization results as a table a person reads."""
    lines = []
    for method, result in summary["methods"].items():
        lines.append(f"{method}: pointing game (tolerance {summary['tolerance_px']:g} px)")
        lines.append(f"  {'label':<28}{'positives':>10}{'hit rate':>10}{'random map':>12}{'random model':>14}")
        rows = list(result["per_label"].items())
        if "hit_rate" in result:
            rows.append(("all positives", result))
        for label, entry in rows:
            randomized = entry.get("randomized_model_hit_rate")
            lines.append(
                f"  {label:<28}{entry['positives']:>10}{entry['hit_rate']:>10.3f}"
                f"{entry['uniform_random_hit_rate']:>12.3f}"
                + (f"{randomized:>14.3f}" if randomized is not None else f"{'-':>14}")
            )
        if not rows:
            lines.append("  no positive image with a lesion box among the explained images")
        specificity = result.get("label_specificity")
        if specificity:
            mean = specificity["spearman_between_labels_mean"]
            lines.append(
                f"  label specificity, {specificity['images']} image(s) with two or more findings: right-label hit "
                f"rate {specificity['right_label_hit_rate']:.3f}, wrong-label {specificity['wrong_label_hit_rate']:.3f}"
                f"; Spearman between two labels' maps {'n/a' if mean is None else f'{mean:.3f}'} (1: not "
                "label-specific)"
            )
        faithfulness = result.get("faithfulness")
        if faithfulness:
            from chexpert_hf.explain.faithfulness import faithfulness_text

            lines.append(f"  faithfulness on {faithfulness['images']} image(s): {faithfulness['metric']}")
            lines.append(faithfulness_text(faithfulness["per_label"]))
        check = result.get("randomization")
        if check:
            mean = "n/a" if check["spearman_mean"] is None else f"{check['spearman_mean']:.3f}"
            median = "n/a" if check["spearman_median"] is None else f"{check['spearman_median']:.3f}"
            lines.append(
                f"  randomized model: Spearman correlation with the trained model's maps mean {mean}, "
                f"median {median} over {check['maps']} maps ({check['constant_maps']} constant)"
            )
    return "\n".join(lines)


# --- several models (the seeds of one recipe, a benchmark's runs) -----------------------------------------------

#: What is averaged over models: a key path into a method's summary (``localization.json["methods"][method]``).
ACROSS_OVERALL = {
    "hit_rate": ("hit_rate",),
    "mean_hit_rate": ("mean_hit_rate",),
    "uniform_random_hit_rate": ("uniform_random_hit_rate",),
    "randomized_model_hit_rate": ("randomized_model_hit_rate",),
    "spearman_vs_randomized": ("randomization", "spearman_mean"),
    "right_label_hit_rate": ("label_specificity", "right_label_hit_rate"),
    "wrong_label_hit_rate": ("label_specificity", "wrong_label_hit_rate"),
    "spearman_between_labels": ("label_specificity", "spearman_between_labels_mean"),
}
ACROSS_PER_LABEL = {
    "hit_rate": ("per_label", "{label}", "hit_rate"),
    "uniform_random_hit_rate": ("per_label", "{label}", "uniform_random_hit_rate"),
    "randomized_model_hit_rate": ("per_label", "{label}", "randomized_model_hit_rate"),
    "right_label_hit_rate": ("label_specificity", "per_label", "{label}", "right_label_hit_rate"),
    "wrong_label_hit_rate": ("label_specificity", "per_label", "{label}", "wrong_label_hit_rate"),
    "faithfulness_combined": ("faithfulness", "per_label", "{label}", "combined"),
}


def _lookup(summary: dict, path: Sequence[str], label: str = "") -> float | None:
    value: object = summary
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key.format(label=label))
    return float(value) if isinstance(value, int | float) and np.isfinite(value) else None


def _spread(values: list[float | None]) -> dict:
    """Mean and sample standard deviation over the models that have the value (std None for fewer than two)."""
    known = [value for value in values if value is not None]
    return {
        "mean": float(np.mean(known)) if known else None,
        "std": float(np.std(known, ddof=1)) if len(known) > 1 else None,
        "models": len(known),
        "values": values,
    }


def _spreads(summaries: list[dict], paths: dict[str, tuple[str, ...]], label: str = "") -> dict:
    return {key: _spread([_lookup(summary, path, label) for summary in summaries]) for key, path in paths.items()}


def across_models(results: dict[str, dict]) -> dict:
    """Several models' ``localization.json`` (by model name) summarised per method and label as mean ± std over
    the models: hit rates with their chance level and randomized-model baseline, label specificity and
    faithfulness, each also listed per model (None where a model has no value)."""
    names = list(results)
    methods = list(dict.fromkeys(method for result in results.values() for method in result["methods"]))
    out: dict = {"models": names, "methods": {}}
    for method in methods:
        summaries = [results[name]["methods"].get(method, {}) for name in names]
        labels = list(dict.fromkeys(label for summary in summaries for label in summary.get("per_label", {})))
        entry = {
            "overall": _spreads(summaries, ACROSS_OVERALL),
            "per_label": {label: _spreads(summaries, ACROSS_PER_LABEL, label) for label in labels},
        }
        entry["baselines"] = baseline_check(entry, names)
        out["methods"][method] = entry
    return out


def baseline_check(entry: dict, names: Sequence[str]) -> dict:
    """Whether one method's maps beat both baselines for every label with boxed positives, model by model: a hit
    rate strictly above the uniform-random map's and above the randomized model's (where it was run); and each
    model's hit rate over all positives as a multiple of its chance level. ``entry`` is a method of
    :func:`across_models`; ``shortfalls`` names each label and model that does not beat a baseline."""
    shortfalls = []
    for label, spreads in entry["per_label"].items():
        hits = spreads["hit_rate"]["values"]
        for baseline, what in (
            ("uniform_random_hit_rate", "uniform map"),
            ("randomized_model_hit_rate", "randomized model"),
        ):
            for name, hit, level in zip(names, hits, spreads[baseline]["values"], strict=True):
                if hit is not None and level is not None and not hit > level:
                    shortfalls.append(
                        {"label": label, "model": name, "baseline": what, "hit_rate": hit, "level": level}
                    )
    overall = entry["overall"]
    ratios = [
        hit / chance if hit is not None and chance else None
        for hit, chance in zip(overall["hit_rate"]["values"], overall["uniform_random_hit_rate"]["values"], strict=True)
    ]
    return {"beaten_everywhere": not shortfalls, "shortfalls": shortfalls, "hit_rate_over_chance": _spread(ratios)}


def _mean_std(entry: dict) -> str:
    if entry["mean"] is None:
        return "-"
    return f"{entry['mean']:.3f}" + (f" ± {entry['std']:.3f}" if entry["std"] is not None else "")


ACROSS_COLUMNS = (
    "hit_rate",
    "uniform_random_hit_rate",
    "randomized_model_hit_rate",
    "right_label_hit_rate",
    "wrong_label_hit_rate",
)


def across_models_text(summary: dict) -> str:
    """The table of :func:`across_models`: per method and label, mean ± std over the models."""
    lines = [f"over {len(summary['models'])} models: {', '.join(summary['models'])} (mean ± std)"]
    names = ("hit rate", "random map", "random model", "right label²", "wrong label²")
    missing = {"mean": None}
    for method, result in summary["methods"].items():
        road = any(entry["faithfulness_combined"]["mean"] is not None for entry in result["per_label"].values())
        columns = (*ACROSS_COLUMNS, "faithfulness_combined") if road else ACROSS_COLUMNS
        header = f"  {'label':<20}" + "".join(f"{name:>17}" for name in (*names, "ROAD³")[: len(columns)])
        lines += [f"{method}:", header]
        rows = [*result["per_label"].items(), ("all positives", result["overall"])]
        for label, entry in rows:
            cells = (entry.get(key, missing) for key in columns)
            lines.append(f"  {label:<20}" + "".join(f"{_mean_std(cell):>17}" for cell in cells))
        lines.append("  ²: on the images with two or more boxed findings, the map against its own / another's boxes")
        if road:
            lines.append(
                "  ³: ROAD faithfulness, (least − most relevant first) / 2 of the logit change, higher = more faithful"
            )
        between = result["overall"]["spearman_between_labels"]
        if between["mean"] is not None:
            lines.append(f"  Spearman between two labels' maps {_mean_std(between)} (1: not label-specific)")
        lines.append("  " + baseline_text(result["baselines"]))
    return "\n".join(lines)


def baseline_text(check: dict) -> str:
    """:func:`baseline_check` in a line."""
    ratio = check["hit_rate_over_chance"]
    times = ""
    if ratio["mean"] is not None:
        spread = "" if ratio["std"] is None else f" ± {ratio['std']:.2f}"
        times = f"; hit rate {ratio['mean']:.2f}{spread} × chance"
    if check["beaten_everywhere"]:
        return "every label beats the uniform map and the randomized model in every model" + times
    below: dict[str, list[str]] = {}
    for item in check["shortfalls"]:
        below.setdefault(item["label"], [])
        if item["model"] not in below[item["label"]]:
            below[item["label"]].append(item["model"])
    named = "; ".join(f"{label} ({', '.join(models)})" for label, models in below.items())
    return f"not above the uniform map or the randomized model: {named}" + times
