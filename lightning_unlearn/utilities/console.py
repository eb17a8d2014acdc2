"""What the paths we control (the one command, the audit, the demo, the testbed) print: our own progress bars, tables
and messages, and the warnings that ask the user to act; not the notes of the libraries beneath."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: The loggers through which Lightning prints its start-up notes (``GPU available: ...``, tips).
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _OwnNotesOnly(logging.Filter):
    """Passes warnings and errors, and notes that our own code logs through Lightning's ``rank_zero_info``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}lightning_unlearn{os.sep}" in record.pathname


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Inside: Lightning's notes (but ours and every warning) go unprinted, DeepSpeed is told the CPU is its
    accelerator on a machine without CUDA (instead of finding it out with a warning), and the deprecation that
    Lightning's own code raises in torch's pytree is not shown. Everything is as it was after."""
    note_filter = _OwnNotesOnly()
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    for logger in loggers:
        logger.addFilter(note_filter)
    accelerator = os.environ.get("DS_ACCELERATOR")
    if accelerator is None and not _has_cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(note_filter)
        if accelerator is None:
            os.environ.pop("DS_ACCELERATOR", None)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
