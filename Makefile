# ScaleML: `make install` sets up .venv (MPI included), `make test` runs the tests,
# `make bench` runs the first real job (sparse AllReduce vs MPI_Allreduce, 4 ranks).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
BENCH_ARGS ?= --n 4194304 --density 0.01 --iterations 10

.PHONY: install install-torch build test lint bench sanitize clean gpu-check

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	@$(PY) -c "from scaleml._cuda import library_report as r; print('scaleml: CUDA library:', r()['detail'])"

# Optional: PyTorch for the gloo baselines of scaleml-bench and their tests (which
# skip, saying so, without it). Pinned: the version of the local CPU wheel that
# pip finds here and in CI; an unpinned torch would download a multi-GB CUDA build.
install-torch:
	$(PY) -m pip install --quiet torch==2.13.0

# Rebuild the C core (and, with nvcc, the CUDA library) in place after editing csrc/.
build:
	$(PY) setup.py --quiet build_ext --inplace --force

test:
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check scaleml tests bench

bench:
	$(MPIEXEC) -n 4 $(PY) -m scaleml.bench $(BENCH_ARGS)

# The C core built with AddressSanitizer and UBSan, then the tests (all but the emulated cluster and the CLI).
sanitize:
	SCALEML_CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	SCALEML_LDFLAGS="-fsanitize=address,undefined" $(PY) setup.py --quiet build_ext --inplace --force
	ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		$(PY) -m pytest -q -x tests --ignore=tests/test_emulated_cluster.py --ignore=tests/test_bench_cli.py; \
		status=$$?; $(PY) setup.py --quiet build_ext --inplace --force; exit $$status

# The GPU check (needs a CUDA device): build in place, GPU tests at 1, 2 and 4 ranks, the GPU benchmark;
# log and JSON under GPU_CHECK_OUT (see scripts/gpu_check.sh).
GPU_CHECK_OUT ?= gpu-check
gpu-check:
	bash scripts/gpu_check.sh $(GPU_CHECK_OUT)

clean:
	rm -rf build scaleml/_core*.so scaleml/_core.c scaleml/_scaleml_cuda.so scaleml/_scaleml_cuda_api.h *.egg-info
