# The two set-up commands of README.md: `make demo` and `make test`.
VENV ?= .venv

.PHONY: setup demo test test-fast clean-results

setup:
	VENV=$(VENV) ./scripts/setup.sh

# The main job on its embedded default: ResNet-20 on Fashion-MNIST, measured on this machine.
demo: setup
	$(VENV)/bin/hilprune search

# The whole test suite (real TVM builds, a real daemon, real SQLite).
test: setup
	$(VENV)/bin/python -m pytest -q

# Without the tests marked slow (tuning, training, end-to-end search).
test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

clean-results:
	rm -rf results/runs results/hilprune.db*
