"""Checkpoints that are whole or absent: a run killed while writing one resumes from the last complete one.

Lightning's ``TorchCheckpointIO`` writes a checkpoint file in place, so a process killed while writing
``last.ckpt`` leaves a truncated file that ``ckpt_path="last"`` then picks up. :class:`AtomicCheckpointIO` writes
it beside its path under a name that no ``"last"`` search matches, then renames it into place.
:class:`AtomicDeepSpeedStrategy` does the same for DeepSpeed's checkpoint folders, and saves what each process
holds of our own state under ZeRO-3 (the KL reference's, TA's base's and TAU's ascent adapter's shards) beside
DeepSpeed's shards, each process its own file, as DeepSpeed saves its own: nothing is gathered whole.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy

from lightning_unlearn.utilities.files import local_path

#: a checkpoint's part that each process saves and loads on its own (ZeRO-3 shards)
PER_PROCESS = "per_process"
#: in a DeepSpeed checkpoint folder: rank{r}.pt, one per process
PER_PROCESS_FOLDER = "per_process"
#: what a checkpoint being written is called (hex digits follow: never "last")
PARTIAL_PREFIX = ".partial-"
#: a complete DeepSpeed checkpoint folder, which a checkpoint's path links to
PUBLISHED_PREFIX = ".checkpoint-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes each checkpoint to ``.partial-<hex>`` beside its path, syncs it to disk
    and renames it into place: the path holds the previous checkpoint or the new one, never part of one. Partial
    files that a killed process left are removed at the next save in the same folder. A remote fsspec URL
    (``s3://…``) is written as Lightning writes it: object stores publish an object whole once it is uploaded.

    Example:
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()])  # doctest: +SKIP
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        local = local_path(path)
        if local is None:  # a remote fsspec URL: an object store publishes an object whole once it is uploaded
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = local
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


class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` whose checkpoints (a folder of every process's shards) are whole or absent: each is
    written by every process into a new folder ``.partial-<hex>``, and once all have finished, it is renamed
    ``.checkpoint-<hex>`` and the checkpoint's path (``last.ckpt``, …) becomes a link to it, replaced in one step;
    the folder it linked to before is removed.
    DeepSpeed itself overwrites a checkpoint folder in place, so a job killed while writing ``last.ckpt`` leaves
    a mix of two steps' shards that ``ckpt_path="last"`` would load.

    The checkpoint's :data:`PER_PROCESS` part (this process's shards of our modules' own state under ZeRO-3) goes
    to ``per_process/rank{r}.pt`` in the folder, written and read by each process; a checkpoint written by another
    number of processes is refused with what to do.

    Example:
        >>> trainer = L.Trainer(strategy=AtomicDeepSpeedStrategy(stage=3), devices=8)  # doctest: +SKIP
        >>> # lightning-unlearn fit ... \\
        >>> #     --trainer.strategy=lightning_unlearn.distributed.checkpoints.AtomicDeepSpeedStrategy
    """

    saves_per_process_state = True  # our modules hand it their shards instead of gathering them

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(self.broadcast(str(filepath)))
        folder = path.parent / self.broadcast(f"{PARTIAL_PREFIX}{uuid.uuid4().hex}")  # one name on every process
        own = checkpoint.pop(PER_PROCESS, None)
        super().save_checkpoint(checkpoint, folder, storage_options)
        if own is not None:
            (folder / PER_PROCESS_FOLDER).mkdir(parents=True, exist_ok=True)
            torch.save(
                own | {"world_size": self.world_size}, folder / PER_PROCESS_FOLDER / f"rank{self.global_rank}.pt"
            )
        self.barrier("checkpoint written")
        if self.is_global_zero:
            self.publish(folder, path)
        self.barrier("checkpoint published")

    def publish(self, folder: Path, path: Path) -> None:
        """Makes ``path`` a link to the complete checkpoint ``folder`` (renamed ``.checkpoint-<hex>`` first) in one
        step, and removes what it linked to before (on the first process)."""
        previous = path.resolve() if path.is_symlink() else None
        if path.exists() and not path.is_symlink():  # a folder that DeepSpeed wrote in place before
            shutil.rmtree(path)
        complete = folder.with_name(folder.name.replace(PARTIAL_PREFIX, PUBLISHED_PREFIX, 1))
        folder.rename(complete)
        link = path.parent / f"{PARTIAL_PREFIX}{uuid.uuid4().hex}.link"
        link.symlink_to(complete.name, target_is_directory=True)
        os.replace(link, path)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)

    def load_checkpoint(self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None) -> dict[str, Any]:
        """DeepSpeed's checkpoint, with this process's :data:`PER_PROCESS` part when the folder has one."""
        folder = Path(checkpoint_path) / PER_PROCESS_FOLDER
        written = len(list(folder.glob("rank*.pt"))) if folder.is_dir() else None
        if written is not None and written != self.world_size:
            raise RuntimeError(
                f"{checkpoint_path} holds the per-process shards of {written} processes (the KL reference, TA's base, "
                f"TAU's ascent adapter), and this job has {self.world_size}: resume with {written} processes "
                "(devices × nodes), or start again from the original model"
            )
        state = super().load_checkpoint(checkpoint_path, weights_only)
        if written is not None:
            own = folder / f"rank{self.global_rank}.pt"
            state[PER_PROCESS] = torch.load(own, map_location="cpu", weights_only=False)
        return state

    def remove_checkpoint(self, filepath: str | os.PathLike) -> None:
        """Removes a checkpoint: the link and the folder it points to."""
        path = Path(filepath)
        if self.is_global_zero and path.is_symlink():
            target = path.resolve()
            path.unlink()
            shutil.rmtree(target, ignore_errors=True)
        elif not path.is_symlink():
            super().remove_checkpoint(filepath)
