"""A trained CheXpert classifier at inference time: loading it safely, and running it on image files or a split.

Loading goes through ``AutoModelForImageClassification.from_pretrained`` (a local folder or a Hub id, the same
code path) with safetensors only: pickled ``.bin`` weights can run code when loaded and are refused. A model whose
code ships with the checkpoint (the ResNet+ViT hybrid) loads only with ``trust_remote_code=True``. Outputs are
independent per-label probabilities (sigmoid), never a softmax, in float64 and computed by
:func:`chexpert_hf.evaluation.metrics.sigmoid` from the model's logits as the Trainer's scorer does: a float32
sigmoid is 1.0
from a logit of about 16.7 and would make confident studies tie, so a score computed here would differ from the
training run's.

Two input paths, each reproducing how the model saw its images:

* image files (:func:`predict_files`): decoded with the project's radiograph reader (16-bit and float images are
  windowed, RGBA transparency is black, EXIF rotation applied) to 8-bit grey, then through the model's own image
  processor, as ``transformers.pipeline`` would do;
* a prepared split (:func:`predict_split`): the embedded JPEGs decoded a batch at a time and normalised as the
  Trainer does during training, so an evaluation reproduces the training run's validation numbers exactly.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel

from chexpert_hf.data.images import open_radiograph
from chexpert_hf.data.transforms import decode_batch, image_bytes, to_float
from chexpert_hf.evaluation.metrics import sigmoid
from chexpert_hf.labels import CHEXPERT_LABELS, check_label_names
from chexpert_hf.models import input_channels

logger = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """The model cannot be loaded for CheXpert inference; the message says why and what to do."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    processor: object  # the checkpoint's image processor
    labels: list[str]  # canonical CheXpert names, in output order
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def channels(self) -> int:
        return input_channels(self.model)

    def square_resize(self) -> tuple[int, list[float], list[float]] | None:
        """``(size, mean, std)`` when the processor only squash-resizes, rescales by 1/255 and normalises (every
        model this project trains), so a batch can skip PIL; None when it does anything else."""
        processor = self.processor
        size = getattr(processor, "size", None) or {}
        size = size if isinstance(size, dict) else {key: getattr(size, key, None) for key in ("height", "width")}
        height, width = size.get("height"), size.get("width")
        simple = (
            height is not None
            and height == width
            and getattr(processor, "do_resize", False)
            and getattr(processor, "do_rescale", False)
            and abs(float(getattr(processor, "rescale_factor", 0.0)) - 1 / 255) < 1e-9
            and getattr(processor, "do_normalize", False)
            and not getattr(processor, "do_center_crop", False)
            and not getattr(processor, "do_pad", False)
        )
        if not simple:
            return None
        mean, std = list(processor.image_mean), list(processor.image_std)
        if len(mean) != self.channels:
            return None
        return int(height), mean, std


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _looks_like_path(source: str) -> bool:
    """Whether a model name is meant as a local folder: more than one ``owner/name`` separator, a leading ``.``,
    ``/`` or ``~``, a backslash, or a parent folder that exists here (``outputs/dmeo`` beside ``outputs/``)."""
    if source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1:
        return True
    parent = Path(source).parent
    return parent != Path(".") and parent.is_dir()


def load_classifier(
    model_name_or_path: str | os.PathLike, *, trust_remote_code: bool = False, device: str | torch.device | None = None
) -> LoadedModel:
    """A CheXpert classifier and its image processor, in eval mode on ``device`` (default: CUDA if present)."""
    source = str(model_name_or_path)
    if source.startswith("~"):
        source = str(Path(source).expanduser())
    if _looks_like_path(source) and not Path(source).exists():  # else the Hub is asked, and a typo reads as no network
        raise ModelLoadError(f"no such folder: {model_name_or_path}")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read the model configuration of {source}: {error}") from None
    model_type = config_dict.get("model_type")
    # Asked even when this process could build the model from its own copy of the class (chexpert_hf registers
    # the hybrid): with the checkpoint's code named in its config, loading is a decision the user takes.
    if config_dict.get("auto_map") and not trust_remote_code:
        code = sorted({ref.split(".")[0] + ".py" for ref in config_dict["auto_map"].values() if isinstance(ref, str)})
        raise ModelLoadError(
            f"{source} is a {model_type!r} model whose code ships with the checkpoint ({', '.join(code)}), and that "
            "code runs when it loads. Pass --trust_remote_code (Python: trust_remote_code=True) if you trust it; "
            "read those files first if you did not make the checkpoint yourself."
        )
    try:
        model = AutoModelForImageClassification.from_pretrained(
            source, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as error:
        if "safetensors" in str(error) or "model.safetensors" in str(error):
            raise ModelLoadError(
                f"{source} has no safetensors weights (model.safetensors). Pickled PyTorch weights (.bin) are "
                "refused because loading them can run arbitrary code; convert them with save_pretrained."
            ) from None
        raise ModelLoadError(f"cannot load the model {source}: {error}") from None
    id2label = model.config.id2label or {}
    names = [id2label[index] for index in sorted(id2label, key=int)]
    try:
        labels = check_label_names(names)
    except ValueError:
        raise ModelLoadError(
            f"{source} is not a CheXpert classifier: its labels are {names}; expected names among "
            f"{', '.join(CHEXPERT_LABELS)}"
        ) from None
    try:
        processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{source} has no image processor (preprocessor_config.json): {error}") from None
    model.eval().to(torch.device(device) if device is not None else default_device())
    return LoadedModel(model, processor, labels, source)


@torch.inference_mode()
def _probabilities(loaded: LoadedModel, pixel_values: torch.Tensor) -> np.ndarray:
    """float64 probabilities from the model's logits (float32, as the Trainer gathers them for its scorer)."""
    logits = loaded.model(pixel_values=pixel_values.to(loaded.device)).logits
    return sigmoid(logits.float().cpu().numpy())


def _batches(count: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, batch_size):
        yield start, min(start + batch_size, count)


def predict_files(
    loaded: LoadedModel, paths: Sequence[str | os.PathLike], *, batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """``(len(paths), L)`` float64 probabilities for image files. An unreadable file raises
    :class:`chexpert_hf.data.images.UnreadableImage` whose message names it, before any output is produced."""
    out = np.empty((len(paths), len(loaded.labels)), dtype=np.float64)
    # closed (ending its line) also when a file fails, so the error is not printed on the bar's line
    with tqdm(total=len(paths), desc="predicting", unit=" images", disable=not progress) as bar:
        for start, stop in _batches(len(paths), batch_size):
            images = [open_radiograph(str(path)) for path in paths[start:stop]]
            pixels = loaded.processor(images=images, return_tensors="pt")["pixel_values"]
            out[start:stop] = _probabilities(loaded, pixels)
            bar.update(stop - start)
    return out


def predict_split(loaded: LoadedModel, dataset, *, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """``(len(dataset), L)`` float64 probabilities for a prepared split (a ``datasets.Dataset`` of embedded
    images), preprocessed as during training when the processor allows it, else through the processor."""
    fast = loaded.square_resize()
    out = np.empty((len(dataset), len(loaded.labels)), dtype=np.float64)
    for start, stop in tqdm(
        list(_batches(len(dataset), batch_size)), desc="evaluating", unit=" batches", disable=not progress
    ):
        encoded = image_bytes(dataset, start, stop)
        if fast is not None:
            size, mean, std = fast
            pixels = to_float(decode_batch(encoded, size).to(loaded.device), mean, std, loaded.channels)
        else:
            images = [Image.open(io.BytesIO(data)).convert("L") for data in encoded]
            pixels = loaded.processor(images=images, return_tensors="pt")["pixel_values"]
        out[start:stop] = _probabilities(loaded, pixels)
    return out
