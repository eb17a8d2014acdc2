#!/bin/bash
# SGA on 2 nodes x 8 GPUs with DeepSpeed ZeRO-3 and CPU offload: sbatch examples/slurm.sh
# Lightning reads the node count, ranks and main address from SLURM: one task per GPU, num_nodes = --nodes.
# Pre-emption: SLURM sends SIGUSR1 two minutes before the end; Lightning saves a checkpoint and requeues the job,
# and the requeued job runs this same command, which resumes from the last checkpoint (--ckpt_path last; the
# first start finds none and starts from the original model). Checkpoints go to a folder that stays the same.
#SBATCH --job-name=unlearn-sga
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=04:00:00
#SBATCH --signal=SIGUSR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail

srun lightning-unlearn fit --config examples/sga.yaml --config examples/zero3_offload.yaml \
  --trainer.num_nodes=2 --trainer.devices=8 \
  --trainer.callbacks+=ModelCheckpoint --trainer.callbacks.dirpath=checkpoints/sga-zero3 \
  --trainer.callbacks.save_last=true --trainer.callbacks.every_n_train_steps=10 \
  --ckpt_path last --output unlearned/sga-zero3
