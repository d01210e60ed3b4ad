# Two commands: `make test` (set up + run the test suite) and `make demo`
# (set up + train the default DiG on the built-in digits, then sample); and `make test-gpu`, the GPU
# suite on a CUDA machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch comes from the local wheel cache / PyPI CPU index and is installed
# before anything else so no dependency can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Triton runs the GLA kernels under its CPU interpreter (TRITON_INTERPRET=1) in the tests. Without it
# the kernel tests fail, and so does this setup, unless GLADIFF_TEST_WITHOUT_TRITON=1 says to skip them.
TRITON_SPEC ?= triton==3.6.0
# Test-only: torch-fidelity's FID Inception, the independent network tests/eval/test_inception.py checks
# ours against. Without its dependencies: it requires torchvision, which PyPI builds against CUDA torch;
# beside the CPU torch it fails to import ("torchvision::nms does not exist") and takes diffusers down.
FIDELITY_SPEC ?= torch-fidelity==0.4.0

.PHONY: setup test test-gpu demo clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q "$(TRITON_SPEC)" || [ "$$GLADIFF_TEST_WITHOUT_TRITON" = 1 ] || \
		{ echo "triton did not install: set GLADIFF_TEST_WITHOUT_TRITON=1 to test without its kernels" >&2; exit 1; }
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "$(FIDELITY_SPEC)"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q tests

# The GPU suite (tests/gpu, marker `gpu`) with the PYTHON that has CUDA torch and Triton installed
# already: no venv and no install, so it runs on a GPU machine without internet. Writes a JSON
# summary (card, versions, pass count, every test's outcome) to GPU_TEST_REPORT.
GPU_TEST_REPORT ?= benchmarks/results/gpu_tests.json
test-gpu:
	GLADIFF_GPU_TEST_REPORT="$(GPU_TEST_REPORT)" $(PYTHON) -m pytest -m gpu tests --durations=15

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads
# that lose their core stall every parallel region (training ran up to 5x slower).
demo: setup
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m gladiff demo

clean:
	rm -rf $(VENV) runs
