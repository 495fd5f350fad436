# Two commands do everything on a fresh machine:
#   make book   set up .venv, execute the notebooks that changed (execution cache) in the full reader
#               setting, build the HTML book strictly (-W) into _build/html
#   make test   set up .venv (and Debian's chromium) if missing; unit tests; every notebook executed once
#               in the quick setting (nbmake); the quick book built from those executions; the browser test
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
JB     := $(VENV)/bin/jupyter-book
# The staged copy of the book that `make test` executes and builds (not under _build/: nbmake skips
# every notebook with a `_build` folder in its path).
QUICK  := _quickbook
# Use the local Omniglot copy when it exists; otherwise fastadapt downloads the official archives.
SHARED_DATA := $(abspath ../shared/data/omniglot)
ifneq ($(wildcard $(SHARED_DATA)/images_background.zip),)
export FASTADAPT_DATA ?= $(SHARED_DATA)
endif
# apt-get needs root; use sudo when not root and sudo exists.
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: book test test-unit test-notebooks quick-book test-browser venv chromium bench reproduce clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# Debian's Chromium for the browser test (Playwright drives it; never `playwright install`).
chromium:
	@[ -x /usr/bin/chromium ] || { echo "installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The full reader setting (FASTADAPT_QUICK unset). Notebooks run through jupyter-cache
# (_build/.jupyter_cache): only a notebook whose code changed is executed again; `rm -rf _build` to
# re-execute everything (e.g. after new results/ or a package change). --all re-reads every page so
# that -W sees every warning, not only those of changed pages.
book: venv
	env -u FASTADAPT_QUICK $(JB) build . -W --all
	@echo "The book is at file://$(abspath _build/html/index.html)"

test: test-unit test-browser

# Unit tests and the static notebook checks (tests/test_notebooks.py); the browser test is separate.
test-unit: venv
	FASTADAPT_QUICK=1 $(PYTEST) -q -n 2 tests --ignore=tests/book

# Every notebook executed once, quick setting, on a staged copy; nbmake writes the outputs back into it.
test-notebooks: venv
	$(PY) scripts/build_book.py stage --dest $(QUICK)
	FASTADAPT_QUICK=1 $(PYTEST) -q -n 2 -p no:cacheprovider --nbmake --nbmake-timeout=300 --overwrite \
	  --durations=0 $(QUICK)/book

# The quick book, built (strictly, execution off) from the notebooks nbmake executed.
quick-book: test-notebooks
	$(JB) build $(QUICK) -W --all

# Every page of the quick book in headless Chromium, at desktop and phone width; screenshots in _build/screenshots/.
test-browser: chromium quick-book
	FASTADAPT_BOOK_HTML=$(QUICK)/_build/html $(PYTEST) -q -p no:cacheprovider tests/book

bench: venv
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_algorithms.py

# The Omniglot table at the papers' protocols: continue every unfinished cell for BUDGET minutes of wall
# time (scripts/reproduce.py; results in results/omniglot/). Example: make reproduce BUDGET=300
BUDGET ?= 60
reproduce: venv
	$(PY) scripts/reproduce.py --all --budget-minutes $(BUDGET)

clean:
	rm -rf _build $(QUICK)
