# alignbench: `make sweep` reproduces the comparisons, `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/default.yaml
# sweeps use one worker per core by default (each run uses one torch thread); WORKERS=N overrides
WORKERS ?=
WORKERS_ARG := $(if $(WORKERS),--workers $(WORKERS))

.PHONY: install sweep sweep-exact test bench bench-sweep bench-gpu gpu-wheels report reproduce clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

sweep: install        ## run the default sweep into results/default, one worker per core (resumes; completed runs are skipped)
	$(BIN)/alignbench sweep --config $(CONFIG) $(WORKERS_ARG)

sweep-exact: install  ## the exact task alone with dpo, ipo, kto
	$(BIN)/alignbench sweep --config configs/exact.yaml $(WORKERS_ARG)

reproduce: install    ## rerun the default sweep into .reproduce/default and compare it run by run with results/default
	$(BIN)/alignbench sweep --config $(CONFIG) --out .reproduce/default $(WORKERS_ARG)
	$(BIN)/alignbench compare results/default .reproduce/default

report: install       ## rebuild results/default/report.md from its files
	$(BIN)/alignbench report results/default

test: install         ## the test suite (under 10 minutes on 2 cores)
	ALIGNBENCH_QUIET=1 $(BIN)/python -m pytest

bench: install        ## performance benchmark (prints a table; not part of make test)
	$(BIN)/python benchmarks/bench.py

bench-sweep: install  ## time the default sweep as make sweep runs it (cold cache, temporary folder; ~15 min on 2 cores)
	$(BIN)/python benchmarks/bench.py --only sweep-default --config $(CONFIG)

GPU_OUT ?= results/gpu
bench-gpu:            ## on a CUDA machine: the GPU check (tests, sweeps, 124M DPO, PPO; < 8 min) into $(GPU_OUT)
	PYTHON=$(PYTHON) benchmarks/gpu_check.sh $(GPU_OUT) $(GPU_ARGS)

gpu-wheels:           ## here, with network: the Python 3.12 wheels the GPU machine lacks, into wheels/
	PYTHON=$(PYTHON) benchmarks/gpu_wheels.sh wheels

clean:
	rm -rf .cache .pytest_cache
