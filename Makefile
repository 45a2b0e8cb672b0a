# lora-basics: every command a learner or developer needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Notebooks read this to pin torch's thread count (reproducible numbers): make test LORA_BASICS_THREADS=1
export LORA_BASICS_THREADS ?= 2
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# Instructor notebooks of the classroom exercises (solutions filled in): checked by nbval too.
SOLUTIONS := $(sort $(wildcard notebooks/exercises/solutions/[0-9]*.ipynb))

.PHONY: help lab test lint unit nbval notebooks bench format clean exercises handout grade data

help:
	@echo "make lab        open JupyterLab on notebooks/ (creates .venv from requirements-lock.txt on first run)"
	@echo "make test       lint + unit + nbval: what CI runs"
	@echo "make lint       ruff check + ruff format --check (code and notebooks)"
	@echo "make unit       the unit tests (pytest tests)"
	@echo "make nbval      re-run every lesson and instructor notebook and compare its outputs (pytest --nbval)"
	@echo "make notebooks  re-execute every notebook in place (fresh kernel, top to bottom)"
	@echo "make bench      speed of the LoRA layers against torch, loralib and PEFT"
	@echo "make format     ruff format + fixes (code and notebooks)"
	@echo "make exercises  regenerate the student exercise notebooks from the solutions"
	@echo "make handout    the student hand-out, handout.zip: lessons, student copies, what they need; no solutions"
	@echo "make grade NOTEBOOKS=path/or/glob  grade learners' exercise notebooks (table + grades.csv)"
	@echo "make data       rebuild data/tiny_gpt.pt (a few minutes; test: LORA_BASICS_REBUILD_DATA=1 make unit)"
	@echo "make clean      remove .venv and caches"

# The environment: pinned versions (torch 2.13.0 CPU build), then the package itself, editable.
$(BIN)/activate: requirements-lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(BIN)/activate

lab: $(BIN)/activate
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

lint: $(BIN)/activate
	$(BIN)/ruff check lora_basics lora_course tools tests notebooks
	$(BIN)/ruff format --check lora_basics lora_course tools tests notebooks

unit: $(BIN)/activate
	$(BIN)/python -m pytest -q tests

nbval: $(BIN)/activate
	$(BIN)/python -m pytest -q --nbval $(NOTEBOOKS) $(SOLUTIONS) --nbval-sanitize-with notebooks/sanitize.cfg --nbval-current-env -p no:randomly

test: lint unit nbval

notebooks: $(BIN)/activate
	$(BIN)/python -m tools.nbtools run $(NOTEBOOKS) $(SOLUTIONS)

bench: $(BIN)/activate
	$(BIN)/python -m tools.bench

format: $(BIN)/activate
	$(BIN)/ruff check --fix lora_basics lora_course tools tests notebooks
	$(BIN)/ruff format lora_basics lora_course tools tests notebooks

exercises: $(BIN)/activate
	$(BIN)/python -m lora_course.exercises generate

handout: $(BIN)/activate
	$(BIN)/python -m lora_course.handout $(or $(HANDOUT),handout.zip)

# make grade NOTEBOOKS=submissions/   (files, folders or globs; GRADE_JOBS=2 grades two notebooks at a time;
# as root, GRADE_USER=nobody runs learners' code as that user: notebooks/exercises/README.md)
grade: $(BIN)/activate
	@test "$(origin NOTEBOOKS)" = "command line" || { echo "usage: make grade NOTEBOOKS=path/or/glob"; exit 2; }
	$(BIN)/python -m lora_course.grader $(NOTEBOOKS) --csv $(or $(GRADE_CSV),grades.csv) --timeout $(or $(GRADE_TIMEOUT),300) --jobs $(or $(GRADE_JOBS),1) $(if $(GRADE_USER),--user $(GRADE_USER),)

data: $(BIN)/activate
	$(BIN)/python -m lora_course.pretrain

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
