# Two commands do everything:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MIN_FREE_GB ?= 8

.PHONY: install demo test test-fast bench clean help

help:
	@echo "make demo   install (if needed) and run the embedded demo search on synthetic scenes (CPU, minutes)"
	@echo "make test   install (if needed) and run the whole test suite"
	@echo "make test-fast   the suite without the slow end-to-end tests"
	@echo "make bench  the CPU smoke mode of every benchmark; on a GPU machine also the GPU tables (docs/benchmarks.md)"

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version'
	@test -x $(PY) || $(PYTHON) -c 'import shutil, sys; free = shutil.disk_usage(".").free / 2**30; \
		sys.exit(0 if free >= $(MIN_FREE_GB) else "error: the virtual environment needs about $(MIN_FREE_GB) GB " \
		f"of free disk (PyTorch); {free:.1f} GB free here. Free some space, or pass MIN_FREE_GB=0 to try anyway (make demo MIN_FREE_GB=0)")'
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

BENCH_OUT ?= results/bench
bench: install
	$(PY) -m pytest tests -k benchmark_smoke
	@if $(PY) -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then \
		$(PY) benchmarks/train_throughput.py --out $(BENCH_OUT)/throughput.json && \
		$(PY) benchmarks/dataloader.py --workers 8,15 --also-no-color --gpu-json $(BENCH_OUT)/throughput.json \
			--out $(BENCH_OUT)/dataloader.json && \
		$(PY) benchmarks/search_overhead.py --out $(BENCH_OUT)/search.json && \
		if [ "$$($(PY) -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then \
			$(PY) benchmarks/multi_gpu.py --out $(BENCH_OUT)/multi_gpu.json; fi; \
	else echo "no GPU here: ran the CPU smoke modes; the GPU tables and their commands are in docs/benchmarks.md"; fi

clean:
	rm -rf $(VENV) results .pytest_cache
