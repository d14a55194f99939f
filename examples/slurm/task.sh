#!/bin/bash
# Per-task wrapper run by srun on every task: exports the torchrun-style variables that
# megatron_hpt.training.distributed and vLLM's external launcher read, then execs the command.
#   RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID, WORLD_SIZE = SLURM_NTASKS
# With DRY_RUN=1 it prints the resolved environment and command instead of running it.
set -euo pipefail
export RANK=${SLURM_PROCID:?task.sh runs under srun (SLURM_PROCID unset)}
export LOCAL_RANK=${SLURM_LOCALID:?SLURM_LOCALID unset}
export WORLD_SIZE=${SLURM_NTASKS:?SLURM_NTASKS unset}
export LOCAL_WORLD_SIZE=${SLURM_NTASKS_PER_NODE:-8}
if [ "${DRY_RUN:-0}" = 1 ]; then
  echo "task RANK=$RANK LOCAL_RANK=$LOCAL_RANK WORLD_SIZE=$WORLD_SIZE MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT: $*"
  exit 0
fi
exec "$@"
