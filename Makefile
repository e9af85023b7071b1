# Every target sets itself up: on a fresh machine `make test` or `make book` is the only command.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
CHAPTERS := $(wildcard notebooks/[0-9][0-9]_*.ipynb)

.PHONY: help install test test-floor book ablations report bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[book,dev]"
	@touch $@

install: $(STAMP)  ## create .venv and install mae with the book and dev extras

test: install  ## run the tests, and re-execute every chapter with nbval (strict)
	$(BIN)/python -m pytest tests $(CHAPTERS) --nbval --nbval-current-env --nbval-cell-timeout=600 $(PYTEST_ARGS)

# The oldest torch the package declares (pyproject.toml), with the last transformers line that runs
# on it (5.x needs torch >= 2.6): the unit tests run there too, without notebooks and book.
FLOOR_VENV ?= .venv-floor
FLOOR_PINS := "torch==2.4.1" "torchvision==0.19.1" "transformers>=4.40,<5" "matplotlib>=3.7" \
	"ipywidgets>=8.0"
$(FLOOR_VENV)/.installed: pyproject.toml
	@test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet $(FLOOR_PINS) -e ".[dev]"
	@touch $@

test-floor: $(FLOOR_VENV)/.installed  ## the unit tests on the oldest supported torch (2.4.1)
	$(FLOOR_VENV)/bin/python -m pytest tests -p no:cacheprovider --deselect tests/test_book.py \
		--deselect tests/test_ablate.py --deselect tests/test_bench.py \
		--deselect tests/test_executors.py \
		--deselect tests/test_streaming.py::test_the_paper_tier_runs_end_to_end_on_a_cpu $(PYTEST_ARGS)

EXECUTE ?= 0
book: install  ## build the HTML book into _build/html (warnings are errors; EXECUTE=1 re-runs chapters)
	@if [ "$(EXECUTE)" = "1" ]; then \
		for nb in $(CHAPTERS); do $(BIN)/jupyter execute --inplace $$nb || exit 1; done; \
		$(BIN)/python tools/runtime_lines.py; fi
	$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going
	$(BIN)/python tools/check_book.py _build/html

SWEEPS ?= mask_ratio decoder_depth
TIER ?= cpu
ABLATE_ARGS ?=
ablations: install  ## run the sweeps $(SWEEPS) at tier $(TIER) with papermill (resumable; ABLATE_ARGS="--executor slurm ...")
	@status=0; for sweep in $(SWEEPS); do \
		$(BIN)/python -m mae ablate $$sweep --tier $(TIER) $(ABLATE_ARGS) || status=1; done; exit $$status

report: install  ## regenerate results/tables and results/figures from results/runs
	$(BIN)/python -m mae report

bench: install  ## speed vs transformers and vit-pytorch -> results/benchmarks (BENCH_ARGS=--smoke: seconds)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:  ## remove build outputs (keeps .venv)
	rm -rf _build .pytest_cache .hypothesis
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
