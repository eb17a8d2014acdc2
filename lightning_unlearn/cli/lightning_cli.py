"""``lightning-unlearn fit``: a LightningCLI over our modules and :class:`~lightning_unlearn.UnlearningDataModule`.

At module level, so that spawn launchers (``ddp_spawn``, DeepSpeed's spawning test strategy) can pickle it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from lightning_unlearn.integrations.huggingface import default_precision


class UnlearningCLI(LightningCLI):
    """LightningCLI with ``--output``: the folder ``save_pretrained`` writes the unlearned model to after fit, with
    ``unlearning.json`` (:func:`~lightning_unlearn.unlearning.training_record`: the settings, the threshold,
    ``rule_met``, the steps, and each forget record's g when training started and ended)."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--output", default=None, help="save the unlearned model here (save_pretrained)")
        parser.set_defaults({"trainer.precision": default_precision()})  # bf16-mixed on a GPU, else 32-true

    def after_fit(self) -> None:
        from lightning_unlearn.unlearning import training_record

        output = self.config["fit"]["output"]
        if output:
            record = json.dumps(training_record(self.trainer, self.model), indent=2)
            self.model.save_pretrained(Path(output), files={"unlearning.json": record})
