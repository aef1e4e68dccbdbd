"""``python -m chexpert_hf.cli``: the same as ``chexpert-hf``."""

import sys

from chexpert_hf.cli.main import main

sys.exit(main())
