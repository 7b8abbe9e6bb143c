"""The bad-input corpus (``tests/bad_inputs.py``): every case exits 2 with ONE line naming its culprit.

Run in this process through ``harness.cli.main`` (no subprocess per case);
every case fails before training, compiling or measuring starts. Daemon
requests have their own corpus in ``tests/devices/test_daemon.py``.
"""

from __future__ import annotations

import pytest

from tests.bad_inputs import CASES, Files, run_case


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("bad-inputs"))


def test_corpus_is_large_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case, files):
    out = run_case(case, files)
    assert not out.traceback, "\n".join(out.lines)
    assert out.code == 2, (out.code, out.lines)
    assert len(out.lines) == 1, out.lines
    for word in case.words:
        assert word in out.lines[0], (word, out.lines[0])
