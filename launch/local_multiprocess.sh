#!/usr/bin/env bash
# N local CPU processes talking over loopback (gloo collectives): a many-host run on one machine.
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS [COMMAND ...]
#
# COMMAND defaults to `python -m sarmae_jax.main`; the rest of the line is passed to it, e.g.
#   launch/local_multiprocess.sh 2 2 python -m sarmae_jax.main --config configs/smoke.py --workdir /tmp/mp
# Each process gets SARMAE_COORDINATOR / SARMAE_NUM_PROCESSES / SARMAE_PROCESS_ID, which
# sarmae_jax.runtime.distributed.maybe_initialize() turns into jax.distributed.initialize(). Output of process i
# goes to stdout prefixed with [i]. Exits non-zero if any process fails; stops all on Ctrl-C.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,11p' "$0"; exit 2
fi
num_processes=$1 devices=$2; shift 2
if [[ $# -eq 0 ]]; then set -- python -m sarmae_jax.main; fi
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < num_processes; i++)); do
  SARMAE_COORDINATOR="127.0.0.1:${port}" SARMAE_NUM_PROCESSES="$num_processes" SARMAE_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}" \
    "$@" > >(sed "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
# The first process to fail stops the others (they would otherwise wait minutes in a collective).
status=0
running=("${pids[@]}")
while ((${#running[@]})); do
  finished=
  if ! wait -n -p finished "${running[@]}"; then
    status=1; kill "${running[@]}" 2>/dev/null || true; break
  fi
  running=("${running[@]/$finished}")
  running=(${running[@]})
done
wait 2>/dev/null || true
exit $status
