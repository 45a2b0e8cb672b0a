# lora-basics: every command a learner or developer needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# .venv is ready only once this file exists. The install writes it last, so an install that failed or was
# interrupted leaves no ready .venv behind, and the next make command retries it.
READY := $(VENV)/ready
# The pinned versions to install.
LOCK ?= requirements-lock.txt
# make lab TORCH=cpu: take torch (the version the lock pins) from PyTorch's CPU-only wheel index. On Linux x86
# the package index's torch is the CUDA build, which brings several GB of CUDA libraries.
TORCH ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION = $(shell sed -n 's/^torch==//p' $(LOCK))
ifneq ($(filter-out cpu,$(TORCH)),)
$(error TORCH=$(TORCH): the only choice is TORCH=cpu (leave it out for the package index's torch))
endif
# Notebooks read this to pin torch's thread count (reproducible numbers): make test LORA_BASICS_THREADS=1
export LORA_BASICS_THREADS ?= 2
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# Instructor notebooks of the classroom exercises (solutions filled in): checked by nbval too.
SOLUTIONS := $(sort $(wildcard notebooks/exercises/solutions/[0-9]*.ipynb))

# A .venv made in another folder (the checkout was moved or copied) is not ready: its scripts start the old
# folder's python. Forget that it was ready; the rule below then makes it anew.
ifneq ($(wildcard $(READY)),)
ifeq ($(shell grep -sF '$(CURDIR)/$(VENV)/bin/' $(BIN)/pip),)
$(shell rm -f $(READY))
endif
endif

.PHONY: help lab test lint unit nbval notebooks bench format clean exercises handout grade data html gitfilter

help:
	@echo "make lab        JupyterLab on the repository, notebooks/ open (creates .venv from requirements-lock.txt"
	@echo "                on first run; on Linux without a GPU: make lab TORCH=cpu, see README)"
	@echo "make test       lint + unit + nbval: what CI runs"
	@echo "make lint       ruff check + ruff format --check (code and notebooks)"
	@echo "make unit       the unit tests (pytest tests)"
	@echo "make nbval      re-run every lesson and instructor notebook and compare its outputs (pytest --nbval)"
	@echo "make notebooks  re-execute every notebook in place (fresh kernel, top to bottom)"
	@echo "make html       static HTML of the lessons in html/, maths rendered offline"
	@echo "make bench      speed of the LoRA layers against torch, loralib and PEFT"
	@echo "make format     ruff format + fixes (code and notebooks)"
	@echo "make exercises  regenerate the student exercise notebooks from the solutions"
	@echo "make handout    the student hand-out, handout.zip: lessons, student copies, what they need; no solutions"
	@echo "make grade NOTEBOOKS=path/or/glob  grade learners' exercise notebooks (table + grades.csv)"
	@echo "make data       rebuild data/tiny_gpt.pt (a few minutes; test: LORA_BASICS_REBUILD_DATA=1 make unit)"
	@echo "make gitfilter  tell git to ignore what JupyterLab adds to a notebook on save (make lab does it)"
	@echo "make clean      remove .venv, html/ and caches"

# The environment: pinned versions, then the package itself, editable. Each step can be re-run on a partly
# made .venv (pip skips what is installed), so re-running the command after a failure continues the install.
$(READY): $(LOCK) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11, 5))' || { \
	  echo "lora-basics needs Python 3.11.5 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1)."; \
	  echo "Name another one: make $(or $(MAKECMDGOALS),lab) PYTHON=python3.11"; exit 1; }
	@if [ -e $(BIN)/pip ] && ! grep -qF '$(CURDIR)/$(VENV)/bin/' $(BIN)/pip; then \
	  echo "$(VENV) was made in another folder (the checkout was moved or copied): making it anew"; \
	  rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(TORCH),cpu)
	$(BIN)/python -m pip install --no-deps --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION)
endif
	@echo "Installing the $$(grep -c '==' $(LOCK)) pinned packages of $(LOCK) (a few minutes the first time)"
	$(BIN)/python -m pip install --progress-bar on -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(READY)

# Targets written against the old marker still work: .venv/bin/activate exists once .venv is ready.
$(BIN)/activate: $(READY)
	@touch $@

# make lab opens the repository root (so data/README.md and the README are reachable), showing notebooks/.
lab: $(READY) gitfilter
	$(BIN)/jupyter lab --LabApp.default_url=/lab/tree/notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

# The filter of .gitattributes: git stores notebooks without the Python version JupyterLab writes into them, and
# the checkout holds them with this Python's (the kernel's), so opening a lesson changes nothing. Needs a git
# checkout (a downloaded archive has nothing to configure) and no torch.
gitfilter:
	@$(PYTHON) -m tools.nbtools gitfilter

lint: $(READY)
	$(BIN)/ruff check lora_basics lora_course tools tests notebooks
	$(BIN)/ruff format --check lora_basics lora_course tools tests notebooks

unit: $(READY)
	$(BIN)/python -m pytest -q tests

nbval: $(READY)
	$(BIN)/python -m pytest -q --nbval $(NOTEBOOKS) $(SOLUTIONS) --nbval-sanitize-with notebooks/sanitize.cfg --nbval-current-env -p no:randomly

test: lint unit nbval

notebooks: $(READY)
	$(BIN)/python -m tools.nbtools run $(NOTEBOOKS) $(SOLUTIONS)

html: $(READY)
	$(BIN)/python -m tools.nbtools html --out html $(NOTEBOOKS)

bench: $(READY)
	$(BIN)/python -m tools.bench

format: $(READY)
	$(BIN)/ruff check --fix lora_basics lora_course tools tests notebooks
	$(BIN)/ruff format lora_basics lora_course tools tests notebooks

exercises: $(READY)
	$(BIN)/python -m lora_course.exercises generate

handout: $(READY)
	$(BIN)/python -m lora_course.handout $(or $(HANDOUT),handout.zip)

# make grade NOTEBOOKS=submissions/   (files, folders or globs; GRADE_JOBS=2 grades two notebooks at a time;
# as root, GRADE_USER=nobody runs learners' code as that user: notebooks/exercises/README.md)
grade: $(READY)
	@test "$(origin NOTEBOOKS)" = "command line" || { echo "usage: make grade NOTEBOOKS=path/or/glob"; exit 2; }
	$(BIN)/python -m lora_course.grader $(NOTEBOOKS) --csv $(or $(GRADE_CSV),grades.csv) --timeout $(or $(GRADE_TIMEOUT),300) --jobs $(or $(GRADE_JOBS),1) $(if $(GRADE_USER),--user $(GRADE_USER),)

data: $(READY)
	$(BIN)/python -m lora_course.pretrain

clean:
	rm -rf $(VENV) html .pytest_cache .ruff_cache .hypothesis *.egg-info build
