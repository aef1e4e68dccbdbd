"""Seconds for scoring with 95% bootstrap intervals (chexpert_hf.evaluation.metrics.score, n_bootstrap resamples),
against
the same resamples computed with one scikit-learn ``roc_auc_score`` call per label and resample.

    python benchmarks/bootstrap_speed.py [--resamples 1000] [--sklearn-resamples 100]

Sizes: the official validation set (200 studies), the demo's (300), and a patient-split hold-out of real CheXpert
(about 19,000 studies); 14 labels, about 30% positive.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from chexpert_hf.evaluation.metrics import score
from chexpert_hf.labels import CHEXPERT_LABELS


def _case(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((rows, len(CHEXPERT_LABELS))) < 0.3).astype(np.float64)
    return np.clip(0.3 * targets + 0.7 * rng.random(targets.shape), 0, 1), targets


def _sklearn_seconds(probabilities: np.ndarray, targets: np.ndarray, resamples: int) -> float:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(resamples):
        rows = rng.integers(0, len(targets), len(targets))
        for column in range(targets.shape[1]):
            roc_auc_score(targets[rows, column], probabilities[rows, column])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument(
        "--sklearn-resamples",
        type=int,
        default=100,
        help="resamples timed for the scikit-learn loop, scaled to --resamples (default 100)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    args = parser.parse_args(argv)
    print(f"{'studies':>8} {'labels':>6} {'chexpert_hf (s)':>16} {'sklearn loop (s)':>17}")
    for studies in (200, 300, 19_000):
        probabilities, targets = _case(studies)
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            score(probabilities, targets, CHEXPERT_LABELS, n_bootstrap=args.resamples)
            best = min(best, time.perf_counter() - start)
        loop = _sklearn_seconds(probabilities, targets, args.sklearn_resamples)
        loop *= args.resamples / args.sklearn_resamples
        print(f"{studies:>8,} {len(CHEXPERT_LABELS):>6} {best:>16.2f} {loop:>17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
