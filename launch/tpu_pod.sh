#!/usr/bin/env bash
# Run one config on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/pvlf_clip_b32.py gs://bucket/workdir [--config.train.batch_size=256 ...]
#   launch/tpu_pod.sh --dry-run TPU_NAME ZONE ...   prints the command it would run, runs nothing
#
# Every host runs the same command; jax.distributed.initialize() finds the other hosts by itself on Cloud TPU, and
# `python -m zscir_jax.main` calls it automatically there (--distributed=auto). The workdir must be shared by all
# hosts (a gs:// bucket): Orbax writes one checkpoint from all of them. Model weights and data must be readable from
# every host at the same path (copy them to each VM's local disk or use a bucket).
set -euo pipefail
run=()
if [ "${1:-}" = "--dry-run" ]; then
  run=(echo); shift
fi
if [ $# -lt 4 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
repo=${ZSCIR_REPO_DIR:-zscir_jax}

"${run[@]}" gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  cd $repo
  [ -d .venv ] || (python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[tpu]')
  . .venv/bin/activate
  python -m zscir_jax.main --config $config --workdir $workdir $*
"
