"""``python -m lightning_unlearn.cli``: the command line (as ``torchrun -m`` and SLURM scripts start it)."""

import sys

from lightning_unlearn.cli.main import main

sys.exit(main())
