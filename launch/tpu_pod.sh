#!/usr/bin/env bash
# Run sarmae-train on every worker of a TPU VM pod slice (one process per host; JAX finds the pod itself).
#
#   launch/tpu_pod.sh [--dry_run] TPU_NAME ZONE [PROJECT] -- [sarmae-train arguments ...]
#
# Example (v5p-64, 8 hosts):
#   launch/tpu_pod.sh sarmae-v5p-64 us-east5-a my-project -- --config configs/sarmae_vit_b16.py \
#       --workdir gs://my-bucket/sarmae_b16 --config.data.path=/mnt/my-bucket/sar1m \
#       --config.sarc.teacher.checkpoint=gs://my-bucket/weights/dinov3_vitb16.pth
# --dry_run prints the gcloud command instead of running it. The repository must already be at
# $SARMAE_DIR (default ~/sarmae-jax) on every worker (e.g. `... ssh --worker=all --command="git clone ..."`);
# the workdir should be a bucket every host can write (Orbax writes one shard per host; every host probes
# it at start-up). The data is read through a Cloud Storage FUSE mount on every worker
# (`gcsfuse --implicit-dirs my-bucket /mnt/my-bucket`), weights and the run directory as gs:// URIs.
# On each host, jax.distributed.initialize() detects the TPU pod (TPU_WORKER_HOSTNAMES), so no
# coordinator address is needed. SIGTERM from a maintenance event makes every host save and exit 0.
#
# Multi-slice (--num_slices N, before TPU_NAME): N slices joined over DCN, created together as a queued
# resource, e.g. `gcloud compute tpus queued-resources create sarmae-qr --node-count 2 --node-prefix sarmae
# --accelerator-type v5litepod-256 --runtime-version v2-alpha-tpuv5-lite --zone us-west4-a`. Its nodes are
# TPU_NAME-0 ... TPU_NAME-(N-1); this script starts the same command on every worker of every node. The
# runtime sets MEGASCALE_COORDINATOR_ADDRESS, MEGASCALE_NUM_SLICES and MEGASCALE_SLICE_ID on each worker,
# JAX gives every device its slice_index, and the trainer lays config.mesh out on ONE slice with the data
# axis spanning the slices (runtime/sharding.py: make_mesh). Plan it first: sarmae-train --dry_run
# --topology v5e:16x16 --num_slices 2.
set -euo pipefail
dry_run=0
num_slices=1
while [[ "${1:-}" == --dry_run || "${1:-}" == --num_slices ]]; do
  if [[ "$1" == --dry_run ]]; then dry_run=1; shift; else num_slices=$2; shift 2; fi
done
if [[ $# -lt 2 ]]; then sed -n '2,26p' "$0"; exit 2; fi
tpu=$1 zone=$2; shift 2
project_flag=()
if [[ $# -gt 0 && "$1" != "--" ]]; then project_flag=(--project="$1"); shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
remote="cd ${SARMAE_DIR:-~/sarmae-jax} && python -m sarmae_jax.main $(printf '%q ' "$@")"
if ((num_slices == 1)); then
  cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" "${project_flag[@]}" --worker=all --command="$remote")
  if ((dry_run)); then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
  exec "${cmd[@]}"
fi
pids=()
for ((s = 0; s < num_slices; s++)); do
  cmd=(gcloud compute tpus tpu-vm ssh "$tpu-$s" --zone="$zone" "${project_flag[@]}" --worker=all --command="$remote")
  if ((dry_run)); then printf '%q ' "${cmd[@]}"; echo; continue; fi
  "${cmd[@]}" & pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
