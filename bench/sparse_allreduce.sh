#!/usr/bin/env bash
# The sparse AllReduce family against MPI_Allreduce on this machine: sizes 4 KiB
# to 64 MiB, densities 1e-4..1, 4 ranks. Writes JSON and CSV next to this script.
#   bench/sparse_allreduce.sh [ranks] [extra scaleml-bench args...]
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${1:-4}
shift || true
out=bench/results
mkdir -p "$out"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
.venv/bin/mpiexec -n "$ranks" .venv/bin/python -m scaleml.bench \
    -b 4K -e 64M -f 4 --density 1e-4 1e-3 1e-2 1e-1 1 \
    --json "$out/sparse_allreduce_P${ranks}_${stamp}.json" \
    --csv "$out/sparse_allreduce_P${ranks}_${stamp}.csv" "$@"
