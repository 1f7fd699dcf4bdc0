# Two commands for a new user: `make demo` builds everything, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: install demo serve materialize ui mlflow test lint clean

$(STAMP): pyproject.toml
	@echo "==> installing into $(VENV): a few minutes on a fresh machine, pip's progress follows"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## demo: set up, build the asset graph if no bundle is promoted, then run the API and the Dagster UI
demo: install
	$(BIN)/recsys-demo $(DEMO_ARGS)

## serve: only the API, on the promoted bundle
serve: install
	$(BIN)/uvicorn recsys_serving.main:app --host 127.0.0.1 --port 8000

## materialize: the whole asset graph with Dagster's dg CLI (same as `dagster asset materialize -m recsys_assets.definitions --select '*'`)
materialize: install
	$(BIN)/dg launch --assets '*'

ui: install
	$(BIN)/dg dev -w workspace.yaml

mlflow: install
	$(BIN)/mlflow ui --backend-store-uri "$${RECSYS_MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/dagster_home/mlflow.db}"

## test: set up, then run the test suite
test: install
	$(BIN)/python -m pytest

## lint: ruff (lint and format), mypy on both packages (strict on recsys_serving), and the Dagster definitions load
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/dg check defs

clean:
	rm -rf data/assets data/raw/synthetic-* dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
