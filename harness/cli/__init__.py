"""The ``hilprune`` command line (the console script is ``harness.cli:main``).

``main.py`` builds the parser (``search``, ``train``) and registers the other
subcommands: ``compile.py`` (compile, bench, tune), ``sim.py`` (predict, sim),
``devices.py`` (devices), ``nightly.py`` (bench --suite, bench compare, report),
``compare.py`` (compare: search methods side by side); ``args.py`` holds the argument types they share.
"""

from harness.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
