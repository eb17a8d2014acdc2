"""Checkpoints that are whole or absent: a run killed while writing one resumes from the last complete one.

Lightning's ``TorchCheckpointIO`` writes a checkpoint file in place, so a process killed while writing
``last.ckpt`` leaves a truncated file that ``ckpt_path="last"`` then picks up. :class:`AtomicCheckpointIO` writes
it beside its path under a name that no ``"last"`` search matches, then renames it into place.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

PARTIAL_PREFIX = ".partial-"  # what a checkpoint being written is called (hex digits follow: never "last")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes each checkpoint to ``.partial-<hex>`` beside its path, syncs it to disk
    and renames it into place: the path holds the previous checkpoint or the new one, never part of one. Partial
    files that a killed process left are removed at the next save in the same folder.

    Example:
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()])  # doctest: +SKIP
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{PARTIAL_PREFIX}*"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)
        partial = path.parent / f"{PARTIAL_PREFIX}{uuid.uuid4().hex}"
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            with open(partial, "rb+") as written:
                os.fsync(written.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
