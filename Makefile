# Every target sets up .venv first, so `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo lint bench mutation clean covers pretrain pretrain-gpu pretrain-status

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-16s %s\n", $$1, $$2}'

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

pretrain: setup ## the shipped weights' recipe on this CPU, in the background (PRETRAIN_MINUTES=N: budget); resumes
	@mkdir -p runs/pretrain
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} nohup $(BIN)/python -m trainer.pretrain > runs/pretrain/recipe.log 2>&1 &
	@echo "pretraining in the background; follow it with: tail -f runs/pretrain/recipe.log runs/pretrain/cli_train.log"

pretrain-gpu: setup ## the same recipe on one GPU for 10 minutes (foreground), writes model/weights/drs_fusion.pt
	OMP_NUM_THREADS=8 $(BIN)/python -m trainer.pretrain --gpu --minutes $${PRETRAIN_MINUTES:-10}

pretrain-status: setup ## where the background pretraining run is
	@$(BIN)/python -m trainer.pretrain --status

demo: setup ## render, train, evaluate and restore on built-in procedural covers; writes demo/
	$(BIN)/python -m trainer.demo

lint: setup ## ruff
	$(BIN)/ruff check .

bench: setup ## run every benchmark, write benchmarks/RESULTS.md (BENCH_ARGS=--quick: minutes)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

mutation: setup ## mutation testing of the modules in tests/mutation.toml (MUTATION_ARGS=model/online.py: one; tens of minutes for all)
	OMP_NUM_THREADS=1 nice -n 15 $(BIN)/python tests/mutation.py $(MUTATION_ARGS)

# Photographs, paintings and artwork from Debian's wallpaper packages, and fonts for the titles.
COVER_PACKAGES := gnome-backgrounds mate-backgrounds plasma-workspace-wallpapers ukui-wallpapers \
	fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-ebgaramond \
	fonts-linuxlibertine fonts-cantarell fonts-roboto fonts-open-sans fonts-lato fonts-crosextra-carlito
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
COVERS_DIR ?= data/covers

covers: setup ## install wallpaper and font packages (apt-get), build $(COVERS_DIR)/{train,val} book covers
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(COVER_PACKAGES) \
	  || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(COVER_PACKAGES); }
	$(BIN)/python -m generator.cover_builder --out $(COVERS_DIR)

clean: ## remove caches and demo output (keeps .venv)
	rm -rf demo outputs multirun .pytest_cache .ruff_cache
