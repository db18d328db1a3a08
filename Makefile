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

# The virtual environment with the build requirements (torch first: the extension compiles against it).
$(VENV)/.installed:
	@echo "ecgkt: creating $(VENV) with $(TORCH) (downloads torch; the environment takes about 2.7 GB)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "setuptools>=77" wheel
	$(PY) -m pip install -q "$(TORCH)" numpy pybind11 ninja
	touch $@

# ecgkt[test] and its C++ extension, built once here and again only when a C++/CUDA source or
# pyproject.toml changed.
$(VENV)/.built: $(VENV)/.installed pyproject.toml $(SOURCES)
	@echo "ecgkt: compiling the C++ extension and installing ecgkt[test] (the compile takes about 15 s on 2 cores; downloading the test dependencies may take longer)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

setup: $(VENV)/.built

demo: setup
	$(VENV)/bin/ecgkt pipeline --out $(RUN)

test: setup
	$(PY) -m pytest -q -rs tests

# Benchmarks (pytest-benchmark): `make bench` = full run, ~6 min on 2 quiet cores, writes benches/results/results.json
# (then `$(PY) benches/report.py` regenerates BENCHMARKS.md); `make bench QUICK=1` = the CI sizes, < 2 min.
# The peers are installed without their dependencies, so that the installed torch is never replaced.
bench: setup
	$(PY) -m pip install -q "PyWavelets>=1.4" requests && $(PY) -m pip install -q --no-deps open-clip-torch neurokit2
	$(PY) -m pytest benches $(if $(QUICK),--quick) --benchmark-autosave --benchmark-json benches/results/pytest-benchmark$(if $(QUICK),-quick).json
	$(if $(QUICK),,$(PY) benches/report.py)

clean:
	rm -rf build dist *.egg-info ecgkt/_C*.so ecgkt/_build_info.json
