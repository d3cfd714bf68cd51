#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: starts launch/train.py on EVERY worker (one JAX process per
# host); jax.distributed.initialize() finds the other hosts by itself on TPU VMs.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra flags...]
#   launch/tpu_pod.sh my-v5p-64 us-east5-a configs/rsunivlm_1b_stage2.py /mnt/runs/s2 \
#       --config.init.path=/mnt/runs/s1 --config.data.train=/mnt/data/rs_mix \
#       --config.ckpt.dir=gs://my-bucket/runs/s2/checkpoints
#
# Requirements: the repository and its virtual environment at $REPO_DIR (default: ~/rsunivlm_jax
# of the workers) on every worker (e.g. via a startup script or `--worker=all` ssh), the data
# readable from every worker (each host reads only its own shard), and checkpoints on storage all
# hosts share (a gs:// bucket for --config.ckpt.dir, or a Filestore/NFS mount for WORKDIR).
# Metrics and TensorBoard are written by process 0 under WORKDIR. Spot/preemptible slices: SIGTERM
# makes every host save and exit; run the same command again to resume.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,15p' "$0"; exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
# The workers' shell parses the remote command: every value in it is quoted with printf %q, so
# spaces, quotes, `;` or `$(...)` in a path or flag reach train.py as the argument they were here.
if [[ -n "${REPO_DIR:-}" ]]; then
  REMOTE_CD=$(printf 'cd %q' "$REPO_DIR")
else
  # shellcheck disable=SC2016  # $HOME is the worker's, expanded there
  REMOTE_CD='cd "$HOME/rsunivlm_jax"'
fi
REMOTE=$(printf 'set -e; %s && source .venv/bin/activate && python launch/train.py --config %q --workdir %q --multihost' \
  "$REMOTE_CD" "$CONFIG" "$WORKDIR")
for arg in "$@"; do
  REMOTE+=" $(printf '%q' "$arg")"
done
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$REMOTE"
