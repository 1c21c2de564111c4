# The README's two commands: `make demo` runs the pipeline end to end, `make test` runs the tests.
# Each sets up what it needs by itself: Debian packages (demo material) and the local .venv.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEBIAN_PACKAGES := fortunes fortunes-min fortunes-de fortunes-es fortunes-it tuxpaint-stamps-default bible-kjv bible-kjv-text wordnet-base chromium chromium-driver

.PHONY: demo test test-fast scaleout-test setup debian-packages ui clean lock

demo: setup
	$(BIN)/image2song demo

test: setup
	$(BIN)/python -m pytest -ra

# Unit and integration tests without the end-to-end runs (a quicker loop while developing).
test-fast: setup
	$(BIN)/python -m pytest -ra -m "not slow"

# The scale-out deployment under faults: Airflow on PostgreSQL (127.0.0.1:5432) with Celery workers and
# Redis (127.0.0.1:6379), fresh databases per run; it says so and skips where those do not answer.
scaleout-test: setup
	IMAGE2SONG_SCALEOUT_TEST=1 $(BIN)/python -m pytest -ra -s tests/test_scaleout.py

ui: setup
	$(BIN)/image2song airflow ui

setup: debian-packages $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; image2song needs Python 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "error: the demo material needs Debian packages:$$missing"; \
	    echo "       install them with: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

# Refresh the lock after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^image2song' > constraints.txt

clean:
	rm -rf state .pytest_cache
