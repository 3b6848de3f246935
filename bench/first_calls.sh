#!/usr/bin/env bash
# The first calls of fresh jobs on the emulated cluster (4 hosts at 1 Gbit/s, no calibration file):
# every method in RUNS (5) fresh processes, each against MPI_Allreduce in the same run (bench/first_calls.py).
#   bash bench/first_calls.sh docs/results/first_calls_emu4x1gbit.jsonl
#   WARMUP=20 bash bench/first_calls.sh docs/results/steady_state_emu4x1gbit.jsonl     # the steady state
#   CODE=/path/to/other/checkout bash bench/first_calls.sh before.jsonl                # another build, same script
# Needs root (network namespaces). The 4 emulated hosts share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/results/first_calls_emu4x1gbit.jsonl}
runs=${RUNS:-5}
code=${CODE:-$PWD}
script=$PWD/bench/first_calls.py
: > "$out"
for method in ${METHODS:-"dropin:fp16:3" "dropin:qsgd4:3" "dropin:onebit:3" "sparse:0.01:1" "dropin::3"}; do
    name=${method%:*}
    name=${name%:}
    warmup=${WARMUP:-${method##*:}}
    for _ in $(seq "$runs"); do
        python3 scripts/emulated_cluster.py --hosts 4 --rate 1gbit --mpiexec .venv/bin/mpiexec --timeout 300 -- \
            env OPENBLAS_NUM_THREADS=1 SCALEML_COST_FILE=/dev/null PYTHONPATH="$code" \
            .venv/bin/python "$script" --method "$name" --warmup "$warmup" --json "$out"
    done
done
