# Two commands do all set-up on a fresh machine:
#   make demo   # venv + build + the main job on the built-in synthetic dataset
#   make test   # venv + build + the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TORCH  ?= torch==2.13.0
RUN    ?= runs/demo

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml setup.py csrc/sources.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH)" numpy pybind11 ninja
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

setup: $(VENV)/.installed
	@# rebuild the extension when C++/CUDA sources changed since the last build
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

demo: setup
	$(VENV)/bin/ecgkt pipeline --out $(RUN)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) benches/run_all.py

clean:
	rm -rf build dist *.egg-info ecgkt/_C*.so ecgkt/_build_info.json
