# The course's commands. `make book` and `make test` do all set-up themselves.
# `make browser` tests the site that `make book` built, in headless Chromium.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The site serves its own MathJax, installed from the npm registry as package-lock.json pins it.
MATHJAX := node_modules/mathjax/es5/tex-mml-chtml.js
# What the intro page offers for download, written into the built site.
DOWNLOADS := _build/html/_downloads
KIT_ZIP := bncourse-student-kit.zip
PDF := $(DOWNLOADS)/bncourse.pdf
# Notebooks listed in _toc.yml, in book order.
NOTEBOOKS = $(shell $(PY) -m bncourse.authoring notebooks)
# Readers who run a chapter themselves see progress bars; stored outputs never do.
export BNCOURSE_QUIET := 1
export PYTHONHASHSEED := 0
# Keep matplotlib state inside the build, not in the user's home.
export MPLCONFIGDIR := $(CURDIR)/_build/.mplconfig

.PHONY: help setup book pdf test unit nbval browser student execute bench lint clean

help:
	@echo "make book     build the site into _build/html (every chapter executed, warnings as errors)"
	@echo "make test     unit tests, property tests and nbval over every chapter (1 and 4 threads)"
	@echo "make pdf      the whole book as one PDF, printed by headless Chromium (after make book)"
	@echo "make browser  open every page of the built site in headless Chromium (after make book)"
	@echo "make execute  re-execute the chapters in place (after changing bncourse or a chapter)"
	@echo "make student  write the student kit (notebooks, wheel, data, README) to _build/student"
	@echo "make bench    benchmarks behind the book's tables: the layer against torch, a folded conv"
	@echo "              net, SyncBatchNorm against the number of processes (all into book/data)"
	@echo "make lint     ruff over the package and the tests"
	@echo "make clean    remove _build and caches (keeps .venv)"

# The virtual environment is rebuilt when requirements.txt or pyproject.toml is newer.
$(STAMP): requirements.txt pyproject.toml
	@if [ ! -x $(PY) ]; then $(PYTHON_SYSTEM) -m venv $(VENV); fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(MATHJAX): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js) is needed to install MathJax"; exit 1; }
	npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $(MATHJAX)

setup: $(STAMP) $(MATHJAX)

# _build/html and the doctrees are written afresh: every chapter is executed on every build, and a
# page whose chapter left the toc does not linger on the site.
book: $(STAMP) $(MATHJAX)
	rm -rf _build/html _build/.doctrees
	$(VENV)/bin/jupyter-book build . --builder html -W -n --keep-going
	$(MAKE) --no-print-directory student
	@echo "Open _build/html/index.html"

# The whole book on one page (the chapters' stored outputs, not a second execution), printed
# to $(PDF) by the system's Chromium with MathJax typeset; needs no network.
pdf: $(STAMP) $(MATHJAX)
	@test -d _build/html || { echo "run make book first (the PDF is linked from its intro)"; exit 1; }
	rm -rf _build/singlehtml
	BNCOURSE_NB_EXECUTION=off $(VENV)/bin/jupyter-book build . --builder singlehtml -n --keep-going
	$(PY) book/_ext/course_pdf.py _build/singlehtml $(PDF)

# The chapters' stored outputs must not depend on the thread count: nbval runs them at one
# thread with the unit tests, then again at four.
test: $(STAMP) $(MATHJAX)
	OMP_NUM_THREADS=1 $(PY) -m pytest tests --ignore=tests/browser $(NOTEBOOKS) --nbval \
		--nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider
	OMP_NUM_THREADS=4 $(MAKE) --no-print-directory nbval

unit: $(STAMP) $(MATHJAX)
	$(PY) -m pytest tests --ignore=tests/browser -p no:cacheprovider

nbval: $(STAMP)
	$(PY) -m pytest $(NOTEBOOKS) --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

# Serves _build/html on 127.0.0.1 and drives the system's Chromium (CHROMIUM=/usr/bin/chromium);
# full-page screenshots of the book's pages go to _build/screenshots, with the accessibility
# audit (axe-core, a development dependency in package.json that the tests inject and the site
# never ships) and the list of external links.
browser: $(STAMP) $(MATHJAX)
	$(PY) -m pytest tests/browser -p no:cacheprovider

# The kit runs from _build/student as it is; its zip is also copied into the built site.
student: $(STAMP)
	rm -rf _build/student
	$(PY) -m bncourse.authoring student _build/student
	@if [ -d _build/html ]; then mkdir -p $(DOWNLOADS) && cp _build/student/$(KIT_ZIP) $(DOWNLOADS)/; fi

execute: $(STAMP)
	$(PY) -m bncourse.authoring execute $(NOTEBOOKS)

bench: $(STAMP)
	$(PY) -m bncourse.bench $(ARGS)
	$(PY) -m bncourse.inference bench
	$(PY) -m bncourse.distributed bench

lint: $(STAMP)
	$(VENV)/bin/ruff check bncourse tests book/_ext

clean:
	rm -rf _build .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
