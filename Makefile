# FT-Ops: one entry point. `make demo` runs the whole loop; `make test` runs the tests. Both install first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-distill test lint ui ui-screenshot e2e-distributed clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)  ## create .venv with the pinned stack (about 5 minutes the first time)

demo: install  ## simulate logs, then curate → govern → fine-tune → evaluate → register → decide through Airflow
	bash scripts/demo.sh

demo-distill: install  ## distillation: an upstream model serves first, a local student replaces it (replacement gate, canary)
	FTOPS_DEMO_DISTILL=1 bash scripts/demo.sh

test: install  ## lint, type-check and run every test
	bash scripts/test.sh

lint: install
	$(VENV)/bin/ruff check dags include plugins tests benchmarks
	$(VENV)/bin/mypy

ui: install  ## the Airflow UI on http://127.0.0.1:8080 (airflow standalone on embedded defaults; login off, so this machine only)
	bash scripts/setup_airflow.sh && bash -c '. scripts/env.sh && airflow standalone'

ui-screenshot: install  ## docs/ui/ftops-page.png: the FT-Ops page on the embedded state (its own API server, then stopped)
	bash -c '. scripts/env.sh && python scripts/ui_screenshot.py'

e2e-distributed: install  ## the loop on the CeleryExecutor: two workers that share no folder (needs PostgreSQL and Redis)
	bash -c '. scripts/env.sh && python scripts/e2e_distributed.py'

clean:  ## forget all embedded state (warehouse, datasets, MLflow, Airflow DB, built base model)
	rm -rf .ftops
