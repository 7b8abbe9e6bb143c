"""The CLI contract: --help everywhere, one clear line and a non-zero exit for bad input."""

import subprocess
import sys

import pytest

from harness.cli import main

HILPRUNE = [sys.executable, "-m", "harness.cli"]


@pytest.mark.parametrize("cmd", [[], ["search"], ["train"], ["compare"]])
def test_help_on_every_subcommand(cmd):
    r = subprocess.run(HILPRUNE + cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: hilprune" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["search", "--model", "resnet999"], "resnet999"),
    (["search", "--target", "pdp11"], "pdp11"),
    (["search", "--device", "toaster"], "toaster"),
    (["search", "--dataset", "imagenet22k"], "imagenet22k"),
    (["search", "--target-ratio", "1.7"], "target_ratio"),
    (["search", "--latency-target", "1.7"], "target_ratio"),
    (["search", "--method", "reinforce", "--baseline", "moving_average"], "reinforce-episodic"),
    (["search", "--baseline", "moving_average"], "method 'ppo' has no option 'baseline'"),  # the default method
    (["search", "--method", "uniform", "--lr", "0.1"], "'lr'"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, needle):
    code = main(args + ["--out", str(tmp_path / "runs"), "--db", str(tmp_path / "r.db"),
                        "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("hilprune: error:") and needle in err and "\n" not in err


def test_negative_count_is_refused_by_the_parser():
    r = subprocess.run(HILPRUNE + ["search", "--episodes", "-3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (
        "hilprune search: error: argument --episodes: -3 must be >= 1 (see: hilprune search --help)")


def test_bare_hilprune_shows_help_and_starts_nothing(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: hilprune" in err and err.strip().endswith("`hilprune search` runs the default search")


def test_missing_dataset_names_the_fix(tmp_path, capsys):
    code = main(["train", "--data-root", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nowhere" in err and "dataset-fashion-mnist" in err and "\n" not in err


def _summary(rounds):
    return {"run_id": "r", "candidates": 3, "wall_s": 10, "run_dir": "d", "stage_seconds": {"build": 1.0},
            "baseline": {"val_top1": 0.91, "test_top1": 0.9, "macs": 100, "params": 10, "latency_p50_ms": 1.0},
            "best": {"val_top1": 0.9, "test_top1": 0.89, "macs": 50, "params": 5, "latency_p50_ms": 0.9, "speedup": 1.11,
                     "speedup_rounds": rounds, "test_top1_drop": 0.01, "arch_signature": "8-8"}}


def test_search_report_gives_the_speedup_spread_and_flags_noise(capsys):
    from harness.cli.main import _print_search

    _print_search(_summary([1.2, 1.05, 1.1]))
    out = capsys.readouterr().out
    assert "speedup 1.11x (rounds 1.05-1.20)" in out and "noise" not in out
    _print_search(_summary([1.2, 0.98, 1.1]))
    out = capsys.readouterr().out
    assert "(rounds 0.98-1.20)" in out and "within this machine's noise" in out


def test_search_report_gives_the_interleaved_interval_and_ties(capsys):
    from harness.cli.main import _print_search

    s = _summary([1.2, 1.05, 1.1])
    s["best"].update(speedup_ci=[1.02, 1.2], final_pairs=32, speedup_within_noise=False, ties=["8-16", "16-8"])
    _print_search(s)
    out = capsys.readouterr().out
    assert "speedup 1.11x [1.02, 1.20] over 32 interleaved pairs" in out and "noise (its interval" not in out
    assert "2 other candidate(s) are within noise of the best's latency (ties): 8-16, 16-8" in out
    s["best"].update(speedup_ci=[0.97, 1.2], speedup_within_noise=True, ties=[])
    _print_search(s)
    out = capsys.readouterr().out
    assert "[0.97, 1.20]" in out and "its interval holds 1.0" in out and "ties" not in out


def test_search_report_gives_onnxruntime_beside_a_slow_tvm_build(capsys):
    from harness.cli.main import _print_search

    s = _summary([1.2, 1.05, 1.1])
    s["best"]["reference_onnxruntime"] = {"baseline_p50_ms": 0.25, "best_p50_ms": 0.245, "speedup": 0.25 / 0.245}
    _print_search(s)
    out = capsys.readouterr().out
    assert "ONNX Runtime on the same device: 0.250 -> 0.245 ms (1.02x)" in out
    assert "runs the unpruned model 4.0x slower than ONNX Runtime" in out  # 1.0 ms TVM vs 0.25 ms ORT
    s["best"]["reference_onnxruntime"]["baseline_p50_ms"] = 0.9  # TVM within 1.5x of ORT: no note
    _print_search(s)
    assert "slower than ONNX Runtime" not in capsys.readouterr().out


def test_bad_value_in_a_config_file_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[search]\nepisodes = -1\n")
    code = main(["search", "--config", str(cfg), "--out", str(tmp_path / "runs"), "--db", str(tmp_path / "r.db")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"hilprune: error: {cfg}: ") and "episodes" in err and "\n" not in err
