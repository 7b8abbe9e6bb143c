"""Nightly benchmarks: the suite TOML (``suite``), running a suite into the results store (``run``),
regression verdicts against the history (``regress``) and the static HTML report (``report``)."""
