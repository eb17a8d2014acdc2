"""Test-only: Lightning's DeepSpeedStrategy on CPU processes over gloo (DESIGN §7).

Lightning refuses DeepSpeed without CUDA; this subclass skips those checks, initializes DeepSpeed's process group
with gloo, and spawns its processes (so a test can start them), which runs ZeRO-2 and ZeRO-3 on CPU.
"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher


class _SpawnLauncher(_MultiProcessingLauncher):
    """Spawns the processes; the main process takes back their state but not their weights, which under ZeRO-3
    are shards (tests read what the processes saved with ``save_pretrained``)."""

    def _recover_results_in_main_process(self, worker_output, trainer) -> None:
        if worker_output.weights_path is not None:
            self._strategy.checkpoint_io.remove_checkpoint(worker_output.weights_path)
        trainer.state = worker_output.trainer_state
        self.update_main_process_results(trainer, worker_output.extra)


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # without DeepSpeedStrategy's CUDA check

    def setup_distributed(self) -> None:
        import deepspeed

        reset_seed()
        self.set_world_ranks()
        self._set_node_environment_variables()
        self._process_group_backend = "gloo"
        deepspeed.init_distributed("gloo", distributed_port=self.cluster_environment.main_port, timeout=self._timeout)

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", 0)  # DeepSpeed reads the index as its device rank

    def _configure_launcher(self) -> None:
        self._launcher = _SpawnLauncher(self, start_method="spawn")
