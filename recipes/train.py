"""Train a recipe: ``accelerate launch [--config_file accelerate_configs/X.yaml] recipes/train.py --recipe NAME``.

A thin shim over :func:`chexpert_hf.training.train.main`; ``chexpert-hf train`` runs the same without accelerate.
"""

import sys

from chexpert_hf.training.train import main

if __name__ == "__main__":
    sys.exit(main())
