# Two entry points for a fresh machine: `make export` and `make test`. Each creates the virtual
# environment it needs from the pinned requirement files.
PYTHON ?= python3
VENV ?= .venv
OUTPUT_DIR ?= exports
VARIANTS ?=
CHECKPOINT_DIR ?=
VERSION ?= 1

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test: requirements.txt requirements-test.txt $(VENV)/.runtime
	$(VENV)/bin/pip install --quiet -r requirements-test.txt
	touch $@

.PHONY: export test
export: $(VENV)/.runtime
	$(VENV)/bin/python -m export.export_all --output_dir=$(OUTPUT_DIR) --version=$(VERSION) \
	  $(if $(VARIANTS),--variants=$(VARIANTS)) $(if $(CHECKPOINT_DIR),--checkpoint_dir=$(CHECKPOINT_DIR))

test: $(VENV)/.test
	$(VENV)/bin/python -m pytest -q tests
