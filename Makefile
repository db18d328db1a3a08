# Two commands do all set-up on a fresh machine:
#   make demo   # venv + build + the main job on the built-in synthetic dataset
#   make test   # venv + build + the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TORCH  ?= torch==2.13.0
RUN    ?= runs/demo

.PHONY: setup demo test bench clean

SOURCES := setup.py $(shell find csrc -type f)

# Dependencies and the first build of the extension.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "setuptools>=77" wheel
	$(PY) -m pip install -q "$(TORCH)" numpy pybind11 ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $(VENV)/.installed $(VENV)/.built

# Rebuild the extension when a C++/CUDA source changed since the last build.
$(VENV)/.built: $(VENV)/.installed $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.built

demo: setup
	$(VENV)/bin/ecgkt pipeline --out $(RUN)

test: setup
	$(PY) -m pytest -q tests

# Benchmarks (pytest-benchmark): `make bench` = full run, ~15 min on 2 cores, writes benches/results/results.json
# (then `$(PY) benches/report.py` regenerates BENCHMARKS.md); `make bench QUICK=1` = the CI sizes, < 2 min.
# The peers are installed without their dependencies, so that the installed torch is never replaced.
bench: setup
	$(PY) -m pip install -q "PyWavelets>=1.4" requests && $(PY) -m pip install -q --no-deps open-clip-torch neurokit2
	$(PY) -m pytest benches $(if $(QUICK),--quick) --benchmark-autosave --benchmark-json benches/results/pytest-benchmark$(if $(QUICK),-quick).json
	$(if $(QUICK),,$(PY) benches/report.py)

clean:
	rm -rf build dist *.egg-info ecgkt/_C*.so ecgkt/_build_info.json
