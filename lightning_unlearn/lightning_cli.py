"""``lightning-unlearn fit``: a LightningCLI over our modules and :class:`~lightning_unlearn.UnlearningDataModule`.

At module level, so that spawn launchers (``ddp_spawn``, DeepSpeed's spawning test strategy) can pickle it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI


class UnlearningCLI(LightningCLI):
    """LightningCLI with ``--output``: the folder ``save_pretrained`` writes the unlearned model to after fit."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--output", default=None, help="save the unlearned model here (save_pretrained)")

    def after_fit(self) -> None:
        output = self.config["fit"]["output"]
        if output:
            self.model.save_pretrained(Path(output))
