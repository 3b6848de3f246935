#!/bin/bash
# The sweep of docs/benchmarks.md ("Never slower than MPI_Allreduce"): the drop-in and auto against
# MPI_Allreduce, 4 KiB to 64 MiB, densities 1e-4 to 1, out of the box (no calibration file), on one
# machine at 2 and 4 ranks and on the emulated cluster (4 hosts at 1 Gbit/s; needs root).
#   bench/dropin_sweep.sh LABEL [OUTDIR]   -> OUTDIR/dropin_sweep_LABEL_{shm_P2,shm_P4,emu4x1gbit}.json
# With CALIBRATE=1 it first runs scaleml-bench calibrate on each setup and sweeps with that file.
set -u
cd "$(dirname "$0")/.."
LABEL=$1; OUT=${2:-docs/results}
PY=$PWD/.venv/bin/python; MPIEXEC=$PWD/.venv/bin/mpiexec
ARGS="-b 4K -e 64M -f 4 --density 1e-4 1e-3 1e-2 1e-1 1 --methods auto dropin mpi_allreduce_again -w 3 -i 10 --quiet"
export PYTHONPATH=$PWD
for P in 2 4; do
  COST=/dev/null
  if [ "${CALIBRATE:-0}" = 1 ]; then
    COST=$OUT/dropin_sweep_calibration_shm_P$P.json
    timeout 600 $MPIEXEC -n $P $PY -m scaleml.bench calibrate -e 16M --output $COST
  fi
  SCALEML_COST_FILE=$COST timeout 1200 $MPIEXEC -n $P $PY -m scaleml.bench $ARGS --json $OUT/dropin_sweep_${LABEL}_shm_P$P.json
done
COST=/dev/null
if [ "${CALIBRATE:-0}" = 1 ]; then
  COST=$OUT/dropin_sweep_calibration_emu4x1gbit.json
  timeout 900 python3 scripts/emulated_cluster.py --hosts 4 --rate 1gbit --mpiexec $MPIEXEC --timeout 800 -- \
    env PYTHONPATH=$PWD $PY -m scaleml.bench calibrate -e 16M --output $COST
fi
timeout 1800 python3 scripts/emulated_cluster.py --hosts 4 --rate 1gbit --mpiexec $MPIEXEC --timeout 1700 -- \
  env PYTHONPATH=$PWD SCALEML_COST_FILE=$COST $PY -m scaleml.bench $ARGS --json $OUT/dropin_sweep_${LABEL}_emu4x1gbit.json
