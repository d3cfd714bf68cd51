#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one JAX process per node driving all of its GPUs;
# jax.distributed.initialize() reads the SLURM environment (coordinator = first node).
#
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/rsunivlm_1b_stage2.py /shared/runs/s2 \
#       --config.init.path=/shared/runs/s1 --config.data.train=/shared/data/rs_mix
#
# WORKDIR must be on a filesystem every node sees (checkpoints are written by all processes).
# `--signal=TERM@300` asks SLURM for SIGTERM 5 minutes before the time limit (and SLURM sends it on
# preemption): every process then saves a checkpoint and exits; with `--requeue` the job restarts
# and resumes from it automatically.
#SBATCH --job-name=rsunivlm-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
REPO_DIR=${REPO_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$REPO_DIR"
# shellcheck source=/dev/null  # the virtual environment made by launch/quickstart.sh
source .venv/bin/activate
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# srun forwards SIGTERM to every task; --kill-on-bad-exit stops the others if one process fails.
srun --kill-on-bad-exit=1 python launch/train.py --config "$CONFIG" --workdir "$WORKDIR" --multihost "$@"
