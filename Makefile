# The README's two commands: `make demo` and `make test`. Both start from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch; pinned so pip never pulls several GB of CUDA packages.
TORCH  := torch==2.13.0
DEMO_OUT ?= demo_out

.PHONY: demo test install install-test benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/crossmodalmas demo --out $(DEMO_OUT)

test: install-test
	$(PY) -m pytest -q Testing

benchmark: install
	$(PIP) install --quiet -e ".[benchmark]"
	$(PY) scripts/benchmark_registration.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
