"""CheXpert data: CSV parsing, the ``datasets`` builder, preparation, splits and the synthetic generator."""

from .builder import CheXpert, CheXpertConfig, label_names
from .prepare import PrepareSummary, load_prepared, prepare
from .splits import frontal_only, patient_split
from .synthetic import synthesize
from .tables import CheXpertFormatError

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
