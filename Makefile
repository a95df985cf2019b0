# Two entry points for a fresh machine: `make export` and `make test`. Each creates the virtual
# environment it needs from the pinned requirement files.
PYTHON ?= python3
VENV ?= .venv
OUTPUT_DIR ?= exports
VARIANTS ?=
CHECKPOINT_DIR ?=
VERSION ?= 1

# The checkout is installed in editable mode (no dependencies, no build isolation: offline), so
# the installed names `video_swin_hub.<hub_models|export|extraction>` resolve to these folders.
$(VENV)/.runtime: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test: requirements.txt requirements-test.txt $(VENV)/.runtime
	$(VENV)/bin/pip install --quiet -r requirements-test.txt
	touch $@

.PHONY: export test
export: $(VENV)/.runtime
	$(VENV)/bin/python -m video_swin_hub.export.export_all --output_dir=$(OUTPUT_DIR) --version=$(VERSION) \
	  $(if $(VARIANTS),--variants=$(VARIANTS)) $(if $(CHECKPOINT_DIR),--checkpoint_dir=$(CHECKPOINT_DIR))

test: $(VENV)/.test
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=25 tests
