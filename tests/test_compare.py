"""``hilprune compare`` (harness/search/compare.py, harness/cli/compare.py): methods side by side at one budget.

The numbers of ``table.csv`` are recomputed here from the results store, read with sqlite3 directly
(not through the module under test). Fast parts: bad input (exit 2 before any work) and a comparison
whose runs are stand-ins that write store rows by hand (one of them raises mid-run), with the real
final step on the simulator. Slow: the real CLI, two methods x two seeds on ``sim:host``.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.search import compare as compare_mod

PNG = b"\x89PNG\r\n\x1a\n"
TINY = dict(model="resnet20", dataset="fashion-mnist", device="sim:host", subset=1000, train_epochs=1,
            eval_samples=200, tune_trials=0, finetune_epochs=1, repeat=10)


def _ws(tmp_path: Path) -> dict:
    return dict(out=str(tmp_path / "out"), db=str(tmp_path / "r.db"), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("argv, says", [
    (["--methods", "reinforce,nope"], "unknown method 'nope'; valid: "),
    (["--methods", ""], "--methods is empty"),
    (["--methods", "random,random"], "names 'random' twice"),
    (["--methods", "random", "--seeds", "0"], "--seeds: 0 must be >= 1"),
    (["--methods", "random", "--budget", "x"], "--budget: 'x' is not an integer"),
    (["--methods", "random", "--model", "resnet999"], "unknown model 'resnet999'"),
    (["--methods", "random", "--device", "bogus"], "unknown device 'bogus'"),
    (["--methods", "random", "--device", "sim:nosuchboard"], "nosuchboard"),
    (["--methods", "random", "--device", "farm:x"], "needs --inventory"),
    (["--methods", "reinforce,random", "--lr", "0.01"], "method 'random' has no option 'lr'"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, capsys, argv, says):
    ws = _ws(tmp_path)
    try:
        status = main(["compare", *argv, "--out", ws["out"], "--db", ws["db"], "--cache-dir", ws["cache_dir"]])
    except SystemExit as exc:  # argparse's own errors (a bad --seeds) exit from inside the parser
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not Path(ws["out"]).exists() and not Path(ws["db"]).exists()  # nothing started


def _fake_search(fail: set[tuple[str, int]]):
    """A stand-in for run_search: stores an unpruned row and ``budget`` candidates with real specs of ResNet-20
    (widths from the seed), latencies made up; raises after two candidates for (method, seed) in ``fail``."""
    from harness.models import build_model
    from harness.pruning import find_groups, full_spec
    from harness.store import ResultsStore

    full = full_spec(find_groups(build_model("resnet20", in_channels=1), torch.zeros(1, 1, 28, 28))).channels

    def run(config, progress):
        run_id = f"{config.method}-s{config.seed}-{time.time_ns()}"
        (Path(config.out) / run_id).mkdir(parents=True)
        store = ResultsStore(config.db)
        try:
            store.create_run(run_id, model=config.model, dataset=config.dataset, device=config.device,
                             target=config.target, seed=config.seed, config={})
            base = dict(episode=-1, step=0, arch_signature="-".join(map(str, full)), spec_json=json.dumps(list(full)),
                        top1=0.80, latency_ratio=1.0, latency_p50_ms=1.0, reward=0.0, device=config.device,
                        target="host", source="simulated", macs=1000)
            store.add_candidate(run_id, base)
            for i in range(config.budget):
                if (config.method, config.seed) in fail and i == 2:
                    raise RuntimeError(f"{config.method} exploded at candidate {i}")
                keep = [max(8, c - 8 * ((i + config.seed + g) % 3)) for g, c in enumerate(full)]
                ratio = 0.95 - 0.05 * i - 0.01 * config.seed - (0.1 if config.method == "random" else 0.0)
                store.add_candidate(run_id, dict(
                    episode=i // 2, step=i % 2 + 1, arch_signature="-".join(map(str, keep)),
                    spec_json=json.dumps(keep), top1=0.80 - 0.004 * i, latency_ratio=ratio, latency_p50_ms=ratio,
                    reward=0.1 * i - 0.02 * config.seed, device=config.device, target="host", source="simulated",
                    macs=900 - 10 * i))
        finally:
            store.close()
        return {"run_id": run_id}

    return run


def _store_rows(db: str, run_id: str) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT episode, top1, latency_ratio, error_kind FROM candidates "
                                             "WHERE run_id=? ORDER BY episode, step", (run_id,))]
    finally:
        con.close()


def _best_speedup(rows: list[dict]) -> float | None:
    """Recomputed by hand: 1 / the smallest ratio among candidates within 1 point of the unpruned top-1."""
    base = next(r for r in rows if r["episode"] == -1)["top1"]
    ok = [r["latency_ratio"] for r in rows if r["episode"] >= 0 and r["error_kind"] is None
          and base - r["top1"] <= 0.01 + 1e-12]
    return 1.0 / min(ok) if ok else None


#: The stand-in runs' comparison: 128 images per split (one batch) keep the base model's training, the
#: final step's fine-tuning and the test evaluation to seconds.
FAST = {**TINY, "subset": 128, "train_epochs": 1, "eval_samples": 100}


def test_comparison_with_a_method_that_raises_mid_run(tmp_path, monkeypatch, capsys):
    ws = _ws(tmp_path)
    monkeypatch.setattr(compare_mod, "_run_search", _fake_search({("random", 1)}))
    argv = ["compare", "--methods", "reinforce,random", "--seeds", "2", "--budget", "4", "--target-ratio", "0.86"]
    for k, v in {**FAST, **ws}.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cmp_dir = Path(out.strip().splitlines()[-1].split(": ", 1)[1])
    assert cmp_dir.parent == Path(ws["out"]) and cmp_dir.name.startswith("compare-")
    for name in ("config.json", "runs.json", "table.csv", "table.md", "fronts.png", "learning_curves.png",
                 "final.csv", "summary.json"):
        assert (cmp_dir / name).is_file(), name
    assert (cmp_dir / "fronts.png").read_bytes()[:8] == PNG
    runs = json.loads((cmp_dir / "runs.json").read_text())
    assert [(r["method"], r["seed"], r["status"]) for r in runs] == [
        ("reinforce", 0, "finished"), ("reinforce", 1, "finished"), ("random", 0, "finished"), ("random", 1, "failed")]
    assert runs[3]["error"] == "RuntimeError: random exploded at candidate 2" and runs[3]["run_id"]
    # what the failed run measured is in the store
    assert len(_store_rows(ws["db"], runs[3]["run_id"])) == 3
    config = json.loads((cmp_dir / "config.json").read_text())
    assert config["budget"] == 4 and config["seeds"] == [0, 1] and config["methods"] == ["reinforce", "random"]

    table = pd.read_csv(cmp_dir / "table.csv")
    rein = table[table.method == "reinforce"].iloc[0]
    by_hand = [_best_speedup(_store_rows(ws["db"], r["run_id"])) for r in runs[:2]]
    # top-1 0.800, 0.796, 0.792 are within a point of 0.80, 0.788 is not: ratio 0.85 (seed 0), 0.84 (seed 1)
    assert by_hand == [pytest.approx(1 / 0.85), pytest.approx(1 / 0.84)]
    assert rein["speedup_median"] == pytest.approx(statistics.median(by_hand))
    assert rein["speedup_min"] == pytest.approx(min(by_hand)) and rein["speedup_max"] == pytest.approx(max(by_hand))
    assert rein["candidates_median"] == 4 and rein["runs_ok"] == 2 and rein["latency_source"] == "simulated"
    # top-1 at target 0.86: candidates 2 and 3 of each seed meet it (ratios 0.85/0.80, 0.84/0.79); the best is 0.792
    assert rein["val_top1_at_target_median"] == pytest.approx(0.792)
    rnd = table[table.method == "random"].iloc[0]
    assert rnd["runs"] == 2 and rnd["runs_ok"] == 1
    assert rnd["note"] == "seed 1 failed: RuntimeError: random exploded at candidate 2"
    md = (cmp_dir / "table.md").read_text()
    assert "seed 1 failed: RuntimeError: random exploded at candidate 2" in md and "simulated latency" in md
    assert md in out  # the table is printed

    final = pd.read_csv(cmp_dir / "final.csv")
    assert list(final.method) == ["unpruned", "reinforce", "random"]
    best = final[final.method == "reinforce"].iloc[0]
    assert best["seed"] == 1 and best["finetune_epochs"] == 1 and best["source"] == "simulated"
    assert best["speedup"] > 1.0 and best["speedup_ci_low"] == pytest.approx(best["speedup"])  # simulated: no noise
    assert 0.0 < best["test_top1"] <= 1.0 and best["test_top1_drop"] == pytest.approx(
        final.iloc[0]["test_top1"] - best["test_top1"])
    assert set(final.session.dropna()) == {0}  # two candidates: one session with the reference
    assert "Final step: each method's best fine-tuned 1 epoch(s)" in md


@pytest.mark.slow
def test_compare_end_to_end_two_methods_two_seeds(tmp_path, capsys):
    ws = _ws(tmp_path)
    argv = ["compare", "--methods", "reinforce,random", "--seeds", "2", "--budget", "4", "--max-steps", "3",
            "--target-ratio", "0.9", "--json"]
    for k, v in {**TINY, **ws}.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    cmp_dir = Path(summary["compare_dir"])
    runs = json.loads((cmp_dir / "runs.json").read_text())
    assert [r["status"] for r in runs] == ["finished"] * 4
    con = sqlite3.connect(ws["db"])
    # one base model for every run: the same unpruned row (top-1, MACs) in each
    bases = {con.execute("SELECT top1, macs FROM candidates WHERE run_id=? AND episode=-1", (r["run_id"],)).fetchone()
             for r in runs}
    assert len(bases) == 1
    for r in runs:  # the budget of evaluated candidates
        (n,) = con.execute("SELECT COUNT(*) FROM candidates WHERE run_id=? AND episode>=0", (r["run_id"],)).fetchone()
        assert n == 4, r
    con.close()
    table = pd.read_csv(cmp_dir / "table.csv")
    for method in ("reinforce", "random"):
        row = table[table.method == method].iloc[0]
        by_hand = [s for s in (_best_speedup(_store_rows(ws["db"], r["run_id"])) for r in runs
                               if r["method"] == method) if s is not None]
        if by_hand:
            assert row["speedup_median"] == pytest.approx(statistics.median(by_hand))
        else:
            assert "no candidate within 1 point of the unpruned top-1" in row["note"]
        assert row["candidates_median"] == 4
    for name in ("fronts.png", "learning_curves.png", "final.csv", "table.md"):
        assert (cmp_dir / name).is_file()
