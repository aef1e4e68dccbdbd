"""Seconds for ``chexpert-hf compare``'s statistics (chexpert_hf.evaluation.compare.compare): every pair of M models
on N studies, DeLong on the 5 competition labels and a paired bootstrap of their mean (2,000 resamples), Holm over
the table. Reading the CSVs is not timed.

    python benchmarks/compare_speed.py [--resamples 2000] [--repeats 3]

Sizes: the official validation set (200 studies), the test set (500), the demo's validation set (300 studies), a
5,000-study hold-out, and a patient-split hold-out of real CheXpert (about 19,000 studies, two models only).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from chexpert_hf.evaluation.compare import COMPARE_RESAMPLES, Input, compare
from chexpert_hf.evaluation.evaluate import Matched
from chexpert_hf.labels import COMPETITION_LABELS
from chexpert_hf.utils import markdown_table

SIZES = ((200, 2), (200, 5), (300, 3), (500, 2), (500, 5), (5_000, 2), (5_000, 5), (19_000, 2))


def _inputs(studies: int, models: int, seed: int = 0) -> list[Input]:
    rng = np.random.default_rng(seed)
    labels = list(COMPETITION_LABELS)
    targets = (rng.random((studies, len(labels))) < 0.3).astype(np.float64)
    keys = np.array([f"patient{index:05d}/study1" for index in range(studies)], dtype=object)
    return [
        Input(
            f"m{index}",
            "synthetic",
            Matched(keys, (1.0 + 0.2 * index) * targets + rng.normal(size=targets.shape), targets, labels, "study", 0),
        )
        for index in range(models)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resamples", type=int, default=COMPARE_RESAMPLES, help="paired bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    args = parser.parse_args(argv)
    rows = []
    for studies, models in SIZES:
        inputs = _inputs(studies, models)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = compare(inputs, resamples=args.resamples)
            best = min(best, time.perf_counter() - start)
        pairs = models * (models - 1) // 2
        tests = sum("p" in row for row in result["comparisons"])
        rows.append([f"{studies:,}", str(models), str(pairs), str(tests), f"{best:.2f}", f"{best / pairs:.2f}"])
        print(f"{studies:>7} studies x {models} models: {best:.2f} s", file=sys.stderr, flush=True)
    header = ["studies", "models", "pairs", "tests", "seconds", "seconds / pair"]
    print("\n".join(markdown_table(header, rows, "rrrrrr", tight_rule=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
