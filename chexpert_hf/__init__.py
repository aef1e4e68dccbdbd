"""chexpert_hf: benchmark Vision Transformers on CheXpert with Hugging Face Transformers and Accelerate.

The names a user needs most, one per stage of the pipeline (data → models → evaluation → training), importable
from here; each is loaded on first use, so ``import chexpert_hf`` stays quick (the CLI starts without torch)::

    from chexpert_hf import prepare, build_model, apply_freeze_policy, CheXpertTrainer, score, load_classifier
"""

from importlib import import_module

__version__ = "0.1.0"

# name -> the module it lives in
_EXPORTS = {
    "COMPETITION_LABELS": "chexpert_hf.labels",
    "CHEXPERT_LABELS": "chexpert_hf.labels",
    "prepare": "chexpert_hf.data",
    "load_prepared": "chexpert_hf.data",
    "synthesize": "chexpert_hf.data",
    "FAMILIES": "chexpert_hf.models",
    "build_model": "chexpert_hf.models",
    "apply_freeze_policy": "chexpert_hf.models.freeze",
    "score": "chexpert_hf.evaluation.metrics",
    "load_classifier": "chexpert_hf.evaluation.inference",
    "evaluate_model": "chexpert_hf.evaluation.evaluate",
    "CheXpertTrainingArguments": "chexpert_hf.training.arguments",
    "parse_recipe": "chexpert_hf.training.arguments",
    "CheXpertTrainer": "chexpert_hf.training.trainer",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'chexpert_hf' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
