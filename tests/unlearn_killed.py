"""Test-only: ``lightning-unlearn unlearn`` SIGKILLed (its whole process group, as a pre-empted job is) once it has
taken a given number of optimizer steps.

    python -m tests.unlearn_killed STEP UNLEARN_ARGUMENTS...
"""

from __future__ import annotations

import sys

import lightning_unlearn.unlearning
from lightning_unlearn.cli import main
from tests.resume_run import KillAt


def killed_at(step: int):
    """``unlearn`` with a callback that kills the job at ``step``."""
    unlearn = lightning_unlearn.unlearning.unlearn

    def wrapped(*args, callbacks=(), **options):
        return unlearn(*args, callbacks=[*callbacks, KillAt(step)], **options)

    return wrapped


if __name__ == "__main__":
    lightning_unlearn.unlearning.unlearn = killed_at(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
