"""Fault suite: a search killed with -9 (no Ctrl-C, no cleanup) is shown as interrupted and
``--resume`` continues it to the same candidates as an uninterrupted run (``tests/search_faults.py``)."""

from __future__ import annotations

import pytest

from tests.search_faults import kill_and_resume

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_search_killed_then_resumed_gives_the_same_candidates(tmp_path):
    r = kill_and_resume(tmp_path)
    if r["finished_before_kill"]:
        pytest.skip("the search finished before it could be killed (machine much faster than expected)")
    assert r["status_raw"] == "running"  # what the killed process left
    assert r["status_seen"] == "interrupted"  # what the next open of the store shows
    assert r["resume_rc"] == 0, r["resume_err"]
    assert r["same_actions"], r
    assert r["integrity"] == "ok" and r["measurements_lost"] == 0
    assert r["candidates_at_kill"] >= 1


def test_checkpoint_with_code_is_refused_not_run(tmp_path):
    """A checkpoint in a shared run directory is loaded with weights_only=True: a pickled callable
    is refused with one line naming the file, and never runs."""
    import pickle

    from harness.search.run import _atomic_torch_save, load_checkpoint

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "checkpoint.pt"
    import torch

    torch.save({"format_version": 2, "x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value) and not marker.exists()
    # what the search writes loads back safely: numpy values become plain data, RNG state a tensor
    import numpy as np

    gen = torch.Generator().manual_seed(3)
    _atomic_torch_save({"format_version": 2, "best_key": [np.float64(0.5), np.int64(2)],
                        "episode": [(np.zeros(3, np.float32), 1, 0.5, None)], "gen": gen.get_state()}, path)
    back = load_checkpoint(path)
    assert back["best_key"] == [0.5, 2] and back["episode"][0][0] == [0.0, 0.0, 0.0]
    assert torch.equal(back["gen"], gen.get_state()) and not path.with_suffix(".pt.tmp").exists()
    path.write_bytes(path.read_bytes()[:100])  # torn
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(path)
