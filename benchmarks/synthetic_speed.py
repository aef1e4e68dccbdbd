"""Images/s of the synthetic CheXpert generator on one core (rendering + JPEG encoding, no disk writes).

python benchmarks/synthetic_speed.py [--patients 300]
"""

from __future__ import annotations

import argparse
import sys
import time

from chexpert_hf.data.synthetic import HEIGHT, WIDTH, synthesize_patient


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=300, help="training patients to render (default 300)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    args = parser.parse_args(argv)

    synthesize_patient(0, "train", 1)  # warm the cached noise textures
    best, images = float("inf"), 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        images = sum(len(synthesize_patient(0, "train", patient)[2]) for patient in range(1, args.patients + 1))
        best = min(best, time.perf_counter() - start)
    print(
        f"{images} images of {WIDTH}x{HEIGHT} from {args.patients} patients in {best:.2f} s: "
        f"{images / best:,.0f} images/s on one core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
