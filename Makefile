# Every target sets up .venv first, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo lint bench mutation clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; bpy 4.5 needs CPython 3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch pinned first and exactly: the CPU wheel on local disk, never a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (bpy 4.5, torch 2.13.0 CPU)

test: setup ## run every test tier (unit, Blender, torchrun, Slurm)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup ## unit tests only (no Blender, no Slurm, no torchrun)
	$(BIN)/python -m pytest -m "not blender and not slurm and not slow and not torchrun" $(PYTEST_ARGS)

demo: setup ## render, train, evaluate and restore on built-in procedural covers; writes demo/
	$(BIN)/python -m trainer.demo

lint: setup ## ruff
	$(BIN)/ruff check .

bench: setup ## run every benchmark, write benchmarks/RESULTS.md (BENCH_ARGS=--quick: minutes)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

mutation: setup ## mutation testing of the modules in tools/mutation.toml (MUTATION_ARGS=model/online.py: one; tens of minutes for all)
	OMP_NUM_THREADS=1 nice -n 15 $(BIN)/python tools/mutation.py $(MUTATION_ARGS)

clean: ## remove caches and demo output (keeps .venv)
	rm -rf demo outputs multirun .pytest_cache .ruff_cache
