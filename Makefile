# lnjax: `make demo` and `make test` set up everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo data test bench lint docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras; re-installs when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[$*]"
	touch $@

# The demo's settings: within 10 minutes on a 2-core CPU (see docs/guides/experiments.md).
DEMO_FLAGS ?= --epochs 3 --train-examples 12000 --seeds 3 --out runs/demo

## demo: the main job: the paper's permutation-invariant MNIST (Figure 6) on real data.
demo: $(VENV)/.installed-experiments
	@$(PY) -m lnjax.data || $(MAKE) --no-print-directory data
	$(PY) -m lnjax.experiments.pi_mnist $(DEMO_FLAGS)

## data: install Fashion-MNIST's IDX files from Debian/Ubuntu (used when no data set is found).
data:
	@command -v apt-get >/dev/null || { echo "No MNIST or Fashion-MNIST found and no apt-get:" \
	  "see 'python -m lnjax.data' and lnjax.data.load for how to get the data."; exit 1; }
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "No data set found: installing Debian's dataset-fashion-mnist"; \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist || \
	  { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; }

# PyTorch's CPU build, for the suite's comparisons against PyTorch (this machine kind keeps
# the 2.13.0 CPU wheel on disk; elsewhere pip downloads it).
$(VENV)/.installed-torch: | $(PY)
	$(PIP) install --quiet "torch==2.13.0"
	touch $@

## test: the whole suite, doctests included (fetches Fashion-MNIST for the real-data check).
test: $(VENV)/.installed-dev $(VENV)/.installed-torch
	@$(PY) -m lnjax.data fashion_mnist >/dev/null || $(MAKE) --no-print-directory data
	$(PY) -m pytest -q -n 2

## bench: speed against flax/PyTorch/a copy, accuracy far from zero, multi-device scaling,
## sharded jit against flax.
bench: $(VENV)/.installed-bench
	$(PY) -m benchmarks.run --out benchmarks/results
	$(PY) -m benchmarks.accuracy
	$(PY) -m benchmarks.scaling --out benchmarks/results
	$(PY) -m benchmarks.sharding --out benchmarks/results
	$(PY) -m benchmarks.training_loop
	$(PY) -m benchmarks.eval_batch

## lint: ruff over the package, tests, benchmarks and the notebooks' sources (colabs/*.py);
## mypy over the package (its settings: pyproject.toml's [tool.mypy]); the architecture's
## import contracts (pyproject.toml's [tool.importlinter]).
lint: $(VENV)/.installed-dev
	$(PY) -m ruff check lnjax tests benchmarks colabs
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

## docs: the documentation site in docs/_build/html (warnings are errors; runs the notebooks).
docs: $(VENV)/.installed-dev
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
