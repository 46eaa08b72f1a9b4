# lnjax: `make demo` and `make test` set up everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras; re-installs when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[$*]"
	touch $@

## demo: the main job (Table 1 of the paper, measured).
demo: $(VENV)/.installed-experiments
	$(PY) -m lnjax.experiments.invariance

## test: the whole suite, doctests included.
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2

## bench: accuracy far from zero.
bench: $(VENV)/.installed-bench
	$(PY) -m benchmarks.accuracy

## lint: ruff over the package, tests and benchmarks.
lint: $(VENV)/.installed-dev
	$(PY) -m ruff check lnjax tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
