# Two commands do everything on a fresh machine:
#   make book   set up .venv, execute every notebook, build the HTML book into _build/html
#   make test   set up .venv if missing, run the unit tests and every notebook (nbmake)
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# Use the local Omniglot copy when it exists; otherwise fastadapt downloads the official archives.
SHARED_DATA := $(abspath ../shared/data/omniglot)
ifneq ($(wildcard $(SHARED_DATA)/images_background.zip),)
export FASTADAPT_DATA ?= $(SHARED_DATA)
endif

.PHONY: book test venv bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

book: venv
	$(VENV)/bin/jupyter-book build . --all --keep-going
	@echo "The book is at file://$(abspath _build/html/index.html)"

test: venv
	FASTADAPT_QUICK=1 $(VENV)/bin/pytest -q tests
	FASTADAPT_QUICK=1 $(VENV)/bin/pytest -q --nbmake --nbmake-timeout=600 book

bench: venv
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_algorithms.py

clean:
	rm -rf _build
