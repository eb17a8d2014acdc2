#!/bin/bash
# SGA on 2 nodes x 8 GPUs with DeepSpeed ZeRO-3 and CPU offload: sbatch examples/slurm.sh
# Lightning reads the node count, ranks and main address from SLURM: one task per GPU, num_nodes = --nodes.
#SBATCH --job-name=unlearn-sga
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=04:00:00
set -euo pipefail

srun lightning-unlearn fit --config examples/sga.yaml --config examples/zero3_offload.yaml \
  --trainer.num_nodes=2 --trainer.devices=8 --output unlearned/sga-zero3
