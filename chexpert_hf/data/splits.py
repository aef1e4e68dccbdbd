"""Split and filter a prepared dataset without decoding any image (only the metadata columns are read)."""

from __future__ import annotations

import numpy as np
from datasets import Dataset


def patient_split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(train, validation)`` with a seeded ``fraction`` of the patients held out; no patient is in both."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be between 0 and 1, got {fraction}")
    patients = np.asarray(dataset["patient_id"][:])  # [:] reads the whole column at once (not row by row)
    unique = np.unique(patients)
    if len(unique) < 2:
        raise ValueError(f"a patient-disjoint split needs at least 2 patients, the dataset has {len(unique)}")
    count = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    held_out = np.random.default_rng(seed).permutation(unique)[:count]
    in_validation = np.isin(patients, held_out)
    return dataset.select(np.flatnonzero(~in_validation)), dataset.select(np.flatnonzero(in_validation))


def frontal_only(dataset: Dataset) -> Dataset:
    """The rows whose view is frontal."""
    return dataset.select(np.flatnonzero(np.asarray(dataset["view"][:]) == "frontal"))
