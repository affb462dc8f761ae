# The course's commands. `make book` and `make test` do all set-up themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Notebooks listed in _toc.yml, in book order.
NOTEBOOKS = $(shell $(PY) -m bncourse.authoring notebooks)
# Readers who run a chapter themselves see progress bars; stored outputs never do.
export BNCOURSE_QUIET := 1
export PYTHONHASHSEED := 0
# Keep matplotlib state inside the build, not in the user's home.
export MPLCONFIGDIR := $(CURDIR)/_build/.mplconfig

.PHONY: help setup book test unit nbval student execute bench lint clean

help:
	@echo "make book     build the site into _build/html (every chapter executed, warnings as errors)"
	@echo "make test     unit tests, property tests and nbval over every chapter"
	@echo "make execute  re-execute the chapters in place (after changing bncourse or a chapter)"
	@echo "make student  write the student notebooks (solutions removed) to _build/student"
	@echo "make bench    benchmark bncourse.BatchNorm against torch (prints a table)"
	@echo "make lint     ruff over the package and the tests"
	@echo "make clean    remove _build and caches (keeps .venv)"

# The virtual environment is rebuilt when requirements.txt or pyproject.toml is newer.
$(STAMP): requirements.txt pyproject.toml
	@if [ ! -x $(PY) ]; then $(PYTHON_SYSTEM) -m venv $(VENV); fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

book: $(STAMP) student
	$(VENV)/bin/jupyter-book build . --builder html -W -n --keep-going
	@echo "Open _build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest tests $(NOTEBOOKS) --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

unit: $(STAMP)
	$(PY) -m pytest tests -p no:cacheprovider

nbval: $(STAMP)
	$(PY) -m pytest $(NOTEBOOKS) --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

student: $(STAMP)
	$(PY) -m bncourse.authoring student _build/student

execute: $(STAMP)
	$(PY) -m bncourse.authoring execute $(NOTEBOOKS)

bench: $(STAMP)
	$(PY) -m bncourse.bench

lint: $(STAMP)
	$(VENV)/bin/ruff check bncourse tests

clean:
	rm -rf _build .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
