# vitsweep: `make sweep` runs the default study from a fresh clone; `make test` runs the suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
PIP    := $(BIN)/python -m pip --quiet --disable-pip-version-check
ARGS   ?=
N      ?= 4
PORT   ?= 8080

.DEFAULT_GOAL := help
.PHONY: help install lock test-latest sysdeps sweep test bench bench-search bench-predictors report dashboard workers clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

# The venv installs exactly what requirements.lock pins, each file checked against its hash; pip
# is the venv's own (it takes torch from this machine's disk where uv and poetry download ~3 GB).
# setuptools comes from the lock too, so the editable install builds without fetching anything.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes --no-deps -r $(LOCK)
	$(PIP) install --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

install: $(STAMP)  ## create .venv from requirements.lock and install vitsweep (editable)

# `make lock UPGRADE=` keeps every pin the lock has and only resolves what pyproject.toml added.
UPGRADE ?= --upgrade
lock: $(STAMP)  ## re-resolve requirements.lock to the newest versions pyproject.toml allows
	$(BIN)/pip-compile $(UPGRADE) --generate-hashes --allow-unsafe --strip-extras --extra dev \
	  --no-emit-index-url --no-emit-find-links --quiet -o $(LOCK) pyproject.toml

test-latest: sysdeps  ## the suite on the newest releases pyproject.toml allows (throwaway venv)
	@d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && $(PYTHON) -m venv "$$d" && \
	 "$$d/bin/python" -m pip install --quiet -e '.[dev]' && \
	 mkdir -p multirun && "$$d/bin/python" -m pip freeze --exclude-editable > multirun/latest-versions.txt && \
	 echo "test-latest: versions in multirun/latest-versions.txt (diff against $(LOCK))" && \
	 "$$d/bin/ruff" check vitsweep tests hydra_plugins && "$$d/bin/python" -m pytest -q $(ARGS)

sweep: $(STAMP)  ## run (or resume) the default study, then write its report; ARGS=overrides
	$(BIN)/vitsweep -m $(ARGS)
	$(BIN)/vitsweep-report $(ARGS)

test: $(STAMP) sysdeps  ## the whole test suite (slow tests included)
	$(BIN)/ruff check vitsweep tests hydra_plugins
	$(BIN)/python -m pytest -q $(ARGS)

sysdeps:
	@# The scale-out tests start a throwaway PostgreSQL cluster: install the server if missing.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	 if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	 else echo "make test: no PostgreSQL server; as root: apt-get install -y postgresql"; fi
	@# The browser tests open report.html and optuna-dashboard in headless Chromium.
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	 if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	 else echo "make test: no Chromium; as root: apt-get install -y chromium"; fi

bench: $(STAMP)  ## measure speed/accuracy targets; JSON under multirun/bench/, README table
	$(BIN)/python -m vitsweep.bench $(ARGS)

bench-search: $(STAMP)  ## samplers on the predictors vs a 100,000-configuration front (~30 min); --real: real trials
	$(BIN)/python -m vitsweep.bench.search $(ARGS)

bench-predictors: $(STAMP)  ## accuracy and cost predictors vs held-out measurements (~30 min idle; --quick)
	$(BIN)/python -m vitsweep.bench.predictors $(ARGS)

report: $(STAMP)  ## rebuild a study's report from its storage; ARGS=experiment=...
	$(BIN)/vitsweep-report $(ARGS)

dashboard: $(STAMP)  ## optuna-dashboard on 127.0.0.1:PORT (8080) for the study storage
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(PORT) $${VITSWEEP_STORAGE:-sqlite:///multirun/vitsweep.db}

workers: $(STAMP)  ## N local workers on one study (ARGS=overrides); each asks for its next trial
	@cores=$$(nproc); threads=$$(( cores / $(N) > 0 ? cores / $(N) : 1 )); pids=""; \
	 for i in $$(seq $(N)); do OMP_NUM_THREADS=$$threads $(BIN)/vitsweep -m $(ARGS) \
	   > multirun/worker-$$i.log 2>&1 & pids="$$pids $$!"; done; \
	 echo "started $(N) workers ($$threads threads each); logs in multirun/worker-*.log"; \
	 fail=0; for p in $$pids; do wait $$p || fail=1; done; exit $$fail

clean:  ## remove outputs (multirun/*) and caches; keeps .venv
	find multirun -mindepth 1 -not -name .gitkeep -delete
	rm -rf .pytest_cache .ruff_cache outputs
