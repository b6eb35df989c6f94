# Two commands for a fresh machine:  `make series` (set up, then run the five notebooks)
# and `make test` (set up, then the test suite). `make lab` opens the notebooks in JupyterLab.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# The pinned builds install from this project's CI machines' disk; elsewhere any torch >= 2.3 works.
TORCH ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

.PHONY: setup series test test-precision test-other-cpu gpu-check lab clean-results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

series: setup
	$(PY) -m anomalymap_helpers run $(ARGS)

# The suite in this CPU's precision, then the precision-marked tests in the other one: fp32 on a
# CPU with native bf16, bf16 (emulated) on one without, so every run covers both CPU paths.
OTHER_PRECISION = $(PY) -c "from anomalymap_helpers.pipeline.training.device import cpu_supports_bf16; print('fp32' if cpu_supports_bf16() else 'bf16')"

test: setup
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-precision

test-precision: setup
	other=$$($(OTHER_PRECISION)) && echo "the precision-marked tests again in $$other (ANOMALYMAP_CPU_PRECISION=$$other)" \
		&& ANOMALYMAP_CPU_PRECISION=$$other $(PY) -m pytest -m precision

# The bf16-kernel-sensitive tests with the other CPU kind's kernels. On a CPU with native bf16:
# capped to AVX2 (ATen's ATEN_CPU_CAPABILITY, oneDNN's ONEDNN_MAX_CPU_ISA) and in bf16: under the oneDNN
# cap PyTorch runs its fallback bf16 kernels, as an AVX2 CPU does (tests.kernels prints which kernels
# ran; see docs/testing.md). On a CPU without it the other kind's instructions cannot run, so it says so.
OTHER_CPU = ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ANOMALYMAP_CPU_PRECISION=bf16

test-other-cpu: setup
	@echo "this CPU as it is:" && $(PY) -m tests.kernels
	@if $(PY) -c "from anomalymap_helpers.pipeline.training.device import cpu_supports_bf16 as s; raise SystemExit(not s())"; then \
		echo "with the other kind's kernels ($(OTHER_CPU)):" && $(OTHER_CPU) $(PY) -m tests.kernels \
		&& $(OTHER_CPU) $(PY) -m pytest -m "precision or bf16_kernels"; \
	else echo "the other kind (native bf16: AVX-512 BF16 or AMX) needs instructions this CPU lacks: nothing to run;" \
		"make test has run the precision tests here in fp32 and in emulated bf16"; fi

gpu-check: setup
	$(PY) benchmarks/gpu_check.py $(ARGS)

lab: setup
	$(PY) -m jupyter lab notebooks

clean-results:
	rm -rf results/default
