#!/usr/bin/env bash
# The first calls of fresh jobs on the emulated cluster (4 hosts at 1 Gbit/s, no calibration file):
# every method in 5 fresh processes, each against MPI_Allreduce in the same run (bench/first_calls.py).
#   bash bench/first_calls.sh docs/results/first_calls_emu4x1gbit.jsonl
# Needs root (network namespaces). The 4 emulated hosts share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/results/first_calls_emu4x1gbit.jsonl}
runs=${RUNS:-5}
: > "$out"
for method in "dropin:fp16 -w 3" "dropin:qsgd4 -w 3" "dropin:onebit -w 3" "sparse:0.01 -w 1" "dropin -w 3"; do
    for run in $(seq "$runs"); do
        # shellcheck disable=SC2086
        SCALEML_COST_FILE=/dev/null python3 scripts/emulated_cluster.py --hosts 4 --rate 1gbit \
            --mpiexec .venv/bin/mpiexec --timeout 300 -- env OPENBLAS_NUM_THREADS=1 SCALEML_COST_FILE=/dev/null \
            .venv/bin/python bench/first_calls.py --method $method --json "$out"
    done
done
