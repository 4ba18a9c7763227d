# One command to run, one command to test.  Everything lands in the project folder:
# .venv/ (the pinned environment), .airflow/ (AIRFLOW_HOME), artifacts/ (runs and registry).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
STAMP := $(VENV)/.installed

export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW_CONFIG ?= $(CURDIR)/airflow.cfg
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER ?= $(CURDIR)/plugins
export MLOPS_ARTIFACT_ROOT ?= $(CURDIR)/artifacts
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins
export PATH := $(VENV)/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

PYTEST_ARGS ?=
# pytest-xdist workers for `make test` and `make test-fast`: one more than the CPU cores, at most 4 (each worker
# may run a whole Airflow stack, and much of a stack test's time is spent waiting on its scheduler and servers,
# so a third worker keeps 2 cores busy); PYTEST_WORKERS=0 runs in this process, one test at a time.  Each worker
# takes one test module at a time (--dist loadfile), so a module's shared stack or trained model is built once,
# in the order tests/collection_order.py gives (the modules that start a stack first).
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n + 1 < 4 ? n + 1 : 4 )))
XDIST := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder
ARGS ?= --help

.PHONY: setup run test test-fast lint format bench clean help airflow

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv with every pinned dependency (idempotent)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

run: setup  ## start Airflow (API server + UI, scheduler, DAG processor, triggerer), the model server, Prometheus and the Pushgateway under supervisord
	@bash scripts/run_local.sh

test: setup  ## run every test tier (unit, DAG integrity, dag.test end-to-end, real Airflow)
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup  ## the fast tiers only (no slow marker): under 3 minutes on 2 cores, for the inner loop
	$(VENV)/bin/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: setup  ## ruff, including Airflow's AIR rules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The same metadata DB as `make run` (scripts/run_local.sh), with the same 30 s wait for SQLite's lock.
airflow: setup  ## the Airflow CLI on this project's home, DB, DAGs and plugins: make airflow ARGS="dags list"
	@if [ -z "$${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ] && [ ! -s "$(AIRFLOW_HOME)/airflow.db" ]; then \
	  echo "note: no metadata DB in $(AIRFLOW_HOME) yet (make run prepares it; or ARGS=\"db migrate\")" >&2; fi
	@AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$(AIRFLOW_HOME)/airflow.db?timeout=30}" \
	  $(VENV)/bin/airflow $(ARGS)

bench: setup  ## run the benchmarks; results go to benchmarks/results/
	$(VENV)/bin/python -m benchmarks

clean:  ## remove the Airflow home and run artifacts (keeps .venv)
	rm -rf $(AIRFLOW_HOME) $(MLOPS_ARTIFACT_ROOT)
