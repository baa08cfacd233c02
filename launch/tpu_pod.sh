#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same command on every worker (one process per host).
#
#   TPU=my-v4-32 ZONE=us-central2-b REPO=https://github.com/<you>/detr_jax.git \
#   WORKDIR=gs://my-bucket/detr/coco_r50 \
#   launch/tpu_pod.sh configs/coco.py --config.coco.data_dir=gs://my-bucket/tfds
#
# Every worker clones (or updates) REPO at BRANCH into ~/detr_jax, installs requirements.txt plus
# JAX's TPU runtime, and runs `python -m detr_jax.main`. jax.distributed is initialised from the
# TPU environment (detr_jax/core/distributed.py); each host loads its own share of every batch.
# WORKDIR must be visible to every worker (a gs:// bucket, or a shared file system path):
# checkpoints are written by all hosts together, logs and result files by host 0.
# Re-running the script resumes from the newest checkpoint in WORKDIR.
#
# Environment: TPU, ZONE, REPO, WORKDIR (required); PROJECT, BRANCH (default main),
# DETACH=1 (run under nohup on the workers, output in ~/detr_jax.log, and return at once).
set -euo pipefail

: "${TPU:?set TPU to the TPU VM (pod slice) name}"
: "${ZONE:?set ZONE to its zone}"
: "${REPO:?set REPO to the git URL of detr_jax}"
: "${WORKDIR:?set WORKDIR (gs://bucket/path, shared by all workers)}"
BRANCH="${BRANCH:-main}"
CONFIG="${1:-configs/coco.py}"
shift || true
EXTRA=""
for a in "$@"; do EXTRA+=" $(printf '%q' "$a")"; done

RUN="python -m detr_jax.main --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR")$EXTRA"
if [[ "${DETACH:-0}" == "1" ]]; then
  RUN="nohup $RUN > ~/detr_jax.log 2>&1 &"
fi

gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command "
set -e
if [ -d ~/detr_jax/.git ]; then
  git -C ~/detr_jax fetch -q origin $BRANCH && git -C ~/detr_jax checkout -q -B $BRANCH FETCH_HEAD
else
  git clone -q --branch $BRANCH $REPO ~/detr_jax
fi
cd ~/detr_jax
pip install -q -r requirements.txt \"jax[tpu]==\$(grep -oP '^jax==\\K.*' requirements.txt)\"
$RUN
"
