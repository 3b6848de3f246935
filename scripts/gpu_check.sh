#!/usr/bin/env bash
# The device check of issue 20, in one call on a fresh GPU machine (Python 3.12, nvcc, torch with CUDA, CuPy,
# numpy, pytest; no registry, no cffi, no MPI), from the repository root, with the wheels of
# scripts/gpu_wheels.sh in .whl/:
#
#   scripts/gpu_check.sh OUT_DIR              # every step has its own time limit: 475 s together at most
#   scripts/gpu_check.sh --dry-run OUT_DIR    # here: no wheel install, the current Python's packages
#                                             # (with SCALEML_CUDA_EMULATE=1: the whole script on the CPU)
#
# Steps: the wheels into a fresh temporary folder, or SCALEML_GPU_SITE (the mpich wheel's lib/ by hand: pip
# --target drops it), the in-place build (MPICC = the wheel's mpicc; nvcc builds the CUDA library), `python -m scaleml`, tests/gpu at one
# process (the MPI module at 1 rank), the MPI module at 2 and 4 ranks, the kernel benchmark, quantized_allreduce
# at 2 and 4 ranks. Logs, JSON and tables go to OUT_DIR (one folder, no subfolders: the device tool brings
# back files at most 2 levels down), with summary.txt: one line per step, its status and seconds.
# The exit status is that of the first failed step (0 when every step passed).
set -u -o pipefail

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
OUT=${1:?usage: scripts/gpu_check.sh [--dry-run] OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
PY=${PYTHON:-python3}
SITE=${SCALEML_GPU_SITE:-}  # default: a fresh temporary folder, made only when the wheels are installed
FIRST_FAILURE=0
export PYTHONUNBUFFERED=1 SCALEML_GPU_TESTS_REQUIRED=1 SCALEML_COST_FILE=/dev/null
T0=$(date +%s)

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, one summary line
step() {
    local name=$1 limit=$2; shift 2
    local start rc status
    start=$(date +%s)
    echo "=== $name (limit ${limit} s): $*" | tee -a "$OUT/$name.log"
    if [ "$(type -t "$1")" = function ]; then  # timeout runs programs, not shell functions
        "$@" 2>&1 | tee -a "$OUT/$name.log"
    else
        timeout --signal=TERM --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
    fi
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT after ${limit} s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    printf '%-18s %-26s %4d s\n' "$name" "$status" "$(( $(date +%s) - start ))" | tee -a "$SUMMARY"
    if [ "$rc" -ne 0 ] && [ "$FIRST_FAILURE" -eq 0 ]; then FIRST_FAILURE=$rc; fi
    return "$rc"
}

install_wheels() {
    ls .whl/*.whl >/dev/null || { echo "no wheels in .whl/: run scripts/gpu_wheels.sh here first"; return 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || return 1
    # pip --target keeps the mpich wheel's bin/ and include/ but not its lib/ (libmpi): unpack it, links as links
    "$PY" - "$SITE" .whl/mpich-*.whl <<'EOF' || return 1
import os, shutil, stat, sys, zipfile
site, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        parts = info.filename.split("/", 3)
        if len(parts) < 4 or parts[1:3] != ["data", "lib"] or info.is_dir():
            continue
        dest = os.path.join(site, "lib", parts[3])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            os.remove(dest)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            os.symlink(z.read(info).decode(), dest)
        else:
            with z.open(info) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.chmod(dest, stat.S_IMODE(mode) or 0o755)
print("libmpi:", sorted(os.listdir(os.path.join(site, "lib"))))
EOF
}

if [ "$DRY_RUN" -eq 0 ]; then
    SITE=${SITE:-$(mktemp -d -t scaleml-gpu-site.XXXXXX)}
    step wheels 20 install_wheels
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PATH=$SITE/bin:$PATH LD_LIBRARY_PATH=$SITE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export MPICC=$SITE/bin/mpicc SCALEML_MPIEXEC=$SITE/bin/mpiexec
else
    echo "dry run: no wheel install; $PY's own packages" | tee -a "$SUMMARY"
    MPIEXEC_GUESS=$(dirname "$(command -v "$PY")")/mpiexec
    export SCALEML_MPIEXEC=${SCALEML_MPIEXEC:-$( [ -x "$MPIEXEC_GUESS" ] && echo "$MPIEXEC_GUESS" || command -v mpiexec )}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
MPIEXEC=$SCALEML_MPIEXEC
{ nvidia-smi -L 2>/dev/null; command -v nvcc && nvcc --version | tail -1; "$PY" -V; echo "mpiexec: $MPIEXEC"; } \
    >"$OUT/environment.log" 2>&1

step build 120 "$PY" setup.py --quiet build_ext --inplace
step report 20 "$PY" -m scaleml
# one process: the kernels, the streams, and the MPI module at 1 rank (2 and 4 ranks are the next steps)
step tests_1proc 80 env SCALEML_GPU_MPI_RANKS=1 "$PY" -m pytest -q -rs -p no:cacheprovider tests/gpu \
    --junitxml="$OUT/tests_1proc.xml"
for P in 2 4; do
    step "tests_mpi$P" $(( P == 2 ? 50 : 60 )) "$MPIEXEC" -n "$P" "$PY" -m pytest -q -x -rs -p no:cacheprovider --with-mpi \
        tests/gpu/mpi_gpu_collectives.py
done
step bench_kernels 60 "$PY" bench/gpu_kernels.py --out "$OUT" --reps 20 --runs 5
for P in 2 4; do
    step "bench_allreduce$P" $(( P == 2 ? 30 : 35 )) "$MPIEXEC" -n "$P" "$PY" bench/gpu_kernels.py --allreduce --out "$OUT" \
        --allreduce-runs 3
done
echo "total $(( $(date +%s) - T0 )) s" | tee -a "$SUMMARY"
echo "--- summary ($OUT/summary.txt)"
cat "$SUMMARY"
exit "$FIRST_FAILURE"
