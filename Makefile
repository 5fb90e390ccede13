# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORK ?= work/demo

.PHONY: demo test test-all lint clean venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch from the machine's local wheels when present (CPU here, CUDA build runs on the CPU too)
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install --quiet torch torchvision
	$(BIN)/pip install --quiet -e ".[dev,cluster]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/da2 demo --workdir $(WORK)

# make test: every test but the `slow` real-process ones (faults, cluster, gpu_check smoke; under 20 minutes);
# make test-all: all of them, what CI runs. Exit code 5 (no tests collected) fails both, by name.
test: $(STAMP)
	@$(BIN)/python -m pytest -q -m "not slow" --durations=10; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

test-all: $(STAMP)
	@$(BIN)/python -m pytest -q --durations=25; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-all: pytest collected no tests" >&2; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf work .pytest_cache
