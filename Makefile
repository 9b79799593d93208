# Two commands do everything:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean help

help:
	@echo "make demo   install (if needed) and run the embedded demo search on synthetic scenes (CPU, minutes)"
	@echo "make test   install (if needed) and run the whole test suite"
	@echo "make test-fast   the suite without the slow end-to-end tests"
	@echo "make bench  run the CPU smoke mode of every benchmark (GPU numbers: see docs/benchmarks.md)"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	# Reference implementation for the parity tests: the original code, pure Python; its
	# metadata asks for Python 3.12 and a GUI stack it does not need for the model itself.
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python depth-anything-v2==0.1.0
	touch $(STAMP)

demo: install
	$(VENV)/bin/automl run --skill depth_net_mono

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

bench: install
	$(PY) -m pytest tests -k benchmark_smoke

clean:
	rm -rf $(VENV) results .pytest_cache
