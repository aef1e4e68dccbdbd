"""CheXpert data: CSV parsing, the ``datasets`` builder, preparation, splits and the synthetic generator."""

from chexpert_hf.data.builder import CheXpert, CheXpertConfig, label_names
from chexpert_hf.data.chexpert_csv import CheXpertFormatError
from chexpert_hf.data.prepare import PrepareSummary, load_prepared, prepare
from chexpert_hf.data.splits import frontal_only, patient_split
from chexpert_hf.data.synthetic import synthesize

__all__ = [
    "CheXpert",
    "CheXpertConfig",
    "CheXpertFormatError",
    "PrepareSummary",
    "frontal_only",
    "label_names",
    "load_prepared",
    "patient_split",
    "prepare",
    "synthesize",
]
