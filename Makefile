# The two set-up commands of the README: `make serve` and `make test`. Both create the
# virtual environment on first use. TORCH_SPEC picks the torch build: the default is the
# CPU wheel these machines serve; a CUDA user can pass their own (e.g. TORCH_SPEC=torch).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: serve test test-ray lint fmt

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e '.[serve,video,safety,dev]'
	touch $@

serve: $(VENV)/.installed
	$(VENV)/bin/vlmserve serve $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy
	@# Quiet when the contracts hold (one line), the whole report when one breaks.
	@$(VENV)/bin/lint-imports --no-logo > $(VENV)/lint-imports.log 2>&1 \
		|| { cat $(VENV)/lint-imports.log; exit 1; }
	@echo "import-linter: $$(tail -n 1 $(VENV)/lint-imports.log)"

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The Ray tests (docs/ray.md): the `ray` extra, then a local Ray instance that the tests start
# and stop themselves. Kept out of `make test` (they take minutes and need Ray).
$(VENV)/.installed-ray: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e '.[serve,video,safety,dev,ray]'
	touch $@

test-ray: $(VENV)/.installed-ray
	$(PY) -m pytest -q -m ray tests/cluster $(PYTEST_ARGS)

fmt: $(VENV)/.installed
	$(PY) -m ruff check --fix src tests benchmarks
	$(PY) -m ruff format src tests benchmarks
