"""Every search method end to end on the real pipeline: ResNet-20 on a Fashion-MNIST subset, the simulated
device ``sim:host`` (deterministic latencies, no TVM build), a budget of 3 candidates each.

One module-wide cache: the base model is trained once (``base_seed`` 0) and every method and search seed
uses it (the baseline cache hit is asserted).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from harness.search.config import SearchConfig
from harness.search.run import run_search

pytestmark = pytest.mark.slow

TINY = dict(subset=500, train_epochs=1, eval_samples=100, tune_trials=0, finetune_epochs=0, repeat=5,
            device="sim:host", budget=3, env={"max_steps": 3, "target_ratio": 0.5})


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    return dict(out=str(root / "runs"), db=str(root / "r.db"), cache_dir=str(root / "cache"))


def _run(ws, **over) -> tuple[dict, list[tuple]]:
    out = run_search(SearchConfig(**{**TINY, **ws, **over}), progress=False)
    db = sqlite3.connect(ws["db"])
    rows = db.execute("SELECT episode, step, action, arch_signature, reward, delta_p, delta_c, delta_h, top1, "
                      "latency_ratio, source, error_kind FROM candidates WHERE run_id=? AND episode >= 0 "
                      "ORDER BY episode, step", (out["run_id"],)).fetchall()
    db.close()
    return out, rows


@pytest.mark.parametrize("method", ["reinforce", "reinforce-episodic", "random", "uniform", "magnitude",
                                    "macs-reward"])
def test_each_method_spends_its_budget_and_stores_its_rows(ws, method):
    out, rows = _run(ws, method=method, seed=1)
    assert out["method"] == method and out["run_id"].startswith(f"resnet20-{method}-sim_host-s1-")
    assert out["candidates"] == len(rows) == 3 and out["budget"] == 3  # the budget, exactly
    assert {r[10] for r in rows} == {"simulated"} and all(r[11] is None for r in rows)
    base = out["baseline"]
    for episode, step, action, sig, reward, dp, dc, dh, top1, ratio, *_ in rows:
        assert sig != base["arch_signature"] and 0 <= top1 <= 1 and dh == pytest.approx(ratio - 1.0)
        gamma = 0.0 if method == "macs-reward" else 1.0  # macs-reward: latency measured, never rewarded
        assert reward == pytest.approx(2.0 * dp - 0.5 * dc - gamma * dh)
        if method in ("uniform", "magnitude"):  # one whole spec per episode, put through the env
            assert step == 1 and action is None
    if method in ("uniform", "magnitude"):
        widths = [[int(x) for x in r[3].split("-")] for r in rows]
        assert [sum(w) for w in widths] == sorted((sum(w) for w in widths), reverse=True)  # mild to strong
    best = out["best"]
    assert best is not None and best["val_top1"] is not None and best["test_top1"] is not None
    assert "top1" not in best and "top1" not in base  # validation and test top-1 are named apart


def test_random_and_uniform_are_reproducible_and_seeds_share_one_base_model(ws):
    first, rows1 = _run(ws, method="random", seed=7)
    again, rows2 = _run(ws, method="random", seed=7)
    other, rows3 = _run(ws, method="random", seed=8, budget=4)
    assert [r[:4] for r in rows1] == [r[:4] for r in rows2]  # same candidates in the same order
    assert len(rows3) == 4
    u1, urows1 = _run(ws, method="uniform", seed=7)
    u2, urows2 = _run(ws, method="uniform", seed=7)
    assert [r[:4] for r in urows1] == [r[:4] for r in urows2]
    # one base model for every method and search seed: one cached baseline, the same unpruned model
    baselines = list((Path(ws["cache_dir"]) / "baselines").glob("*.pt"))
    assert len(baselines) == 1 and baselines[0].name.endswith("-s0-e1.pt")
    assert {s["baseline_train"]["path"] for s in (first, again, other, u1, u2)} == {str(baselines[0])}
    assert len({s["baseline"]["val_top1"] for s in (first, other, u1)}) == 1
    assert first["seed"] == 7 and other["seed"] == 8 and first["base_seed"] == other["base_seed"] == 0
