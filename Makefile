# Med-SegLens: `make run` starts the service (building the demo zoo on first use), `make test` runs lint + tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup compat run test lint format openapi results bench clean

setup: $(STAMP)

# torch is installed first, pinned to the CPU build, so no resolver ever pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# A separate venv with the real sae-lens 6 (tests/compat checks our SAE files load in it), built
# once: torch first (CPU build, as above), then sae-lens with torch pinned so it pulls no CUDA build.
COMPAT := .venv-compat
compat: $(COMPAT)/.installed

$(COMPAT)/.installed:
	test -x $(COMPAT)/bin/python || $(PY) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q torch==2.13.0
	$(COMPAT)/bin/pip install -q 'sae-lens>=6,<7' torch==2.13.0
	touch $@

run: setup
	$(BIN)/medseglens serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup lint
	$(BIN)/python -m pytest

openapi: setup
	$(BIN)/medseglens openapi > openapi/openapi.json

# The README's result tables from a built zoo's cards and reports: `make results ZOO=zoo`.
ZOO ?= zoo
results: setup
	$(BIN)/medseglens zoo results --zoo $(ZOO) --format markdown

clean:
	rm -rf $(VENV) $(COMPAT) .pytest_cache .ruff_cache
