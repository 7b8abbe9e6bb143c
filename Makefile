# The two set-up commands of README.md: `make demo` and `make test`.
VENV ?= .venv

.PHONY: setup demo test test-fast clean-results

setup:
	VENV=$(VENV) ./scripts/setup.sh

# The main job on its embedded default: ResNet-20 on Fashion-MNIST, measured on this machine.
# First the one-time grid warm-up of this machine's tuning database (a second call returns at once), so
# the search's candidates are predicted by the board's latency table and confirmed by measurement (hybrid).
demo: setup
	$(VENV)/bin/hilprune tune --model resnet20 --input-shape 1,1,28,28 --target host --grid 8 --trials 8
	$(VENV)/bin/hilprune search

# The whole test suite (real TVM builds, a real daemon, real SQLite).
test: setup
	$(VENV)/bin/python -m pytest -q

# Without the tests marked slow (tuning, training, end-to-end search).
test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

clean-results:
	rm -rf results/runs results/hilprune.db*
