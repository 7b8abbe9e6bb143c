"""harness/nightly/suite.py: the suite TOML contract and its one-line-per-problem errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.nightly.suite import SuiteError, load_suite

REPO = Path(__file__).resolve().parents[2]


def test_the_example_nightly_suite_is_valid():
    suite = load_suite(REPO / "benchmarks" / "suites" / "nightly.toml")
    assert suite.name == "nightly" and len(suite.benchmarks) >= 2 and len(suite.sha256) == 64
    ref, b = suite.benchmarks[:2]
    assert suite.reference == ref.name == "ref-resnet20-16" and ref.input_shape == (1, 1, 16, 16)
    assert (ref.model, ref.seed, ref.tune_trials) == ("resnet20", 0, 0)  # fixed: random weights of seed 0, untuned
    assert b.model == "resnet20" and b.input_shape == (1, 1, 28, 28) and b.targets == ("host",)


def test_contract_defaults_and_relative_onnx(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[[benchmark]]\nname = "a"\nmodel = "resnet20"\ninput_shape = [1, 1, 28, 28]\n'
                 '[[benchmark]]\nname = "b"\nonnx = "models/net.onnx"\ninput_shape = [1, 3, 32, 32]\n'
                 'targets = ["host", "rpi4"]\ndevices = ["local", "sim:rpi4"]\ntune_trials = 0\n')
    a, b = load_suite(f).benchmarks
    assert (a.targets, a.devices, a.onnx, a.tune_trials, a.backend) == (("host",), ("local",), None, None, None)
    assert b.onnx == tmp_path / "models" / "net.onnx" and b.model is None  # existence is checked at run time
    assert b.targets == ("host", "rpi4") and b.devices == ("local", "sim:rpi4") and b.tune_trials == 0
    assert load_suite(f).name == "s"


BROKEN = """
[[benchmark]]
name = "ok-one"
model = "resnet20"
input_shape = [1, 1, 28, 28]

[[benchmark]]
name = "both"
model = "resnet20"
onnx = "x.onnx"
input_shape = [1, 3]

[[benchmark]]
model = "vgg99"
input_shape = [1, 3, 32, 32]
targets = ["pdp11"]
devices = ["toaster"]
colour = "red"

[[benchmark]]
name = "ok-one"
onnx = "y.onnx"
input_shape = [1, 3, 32, 0]
"""


def test_every_problem_is_one_line_naming_benchmark_and_field(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text(BROKEN)
    with pytest.raises(SuiteError) as info:
        load_suite(f)
    lines = info.value.problems  # each problem names its benchmark and field
    assert "\n" not in str(info.value)  # the CLI shows them on one line
    expect = [
        ("benchmark #2 'both'", "model/onnx", "give exactly one"),
        ("benchmark #2 'both'", "input_shape", "[1, 3]"),
        ("benchmark #3", "colour", "unknown key"),
        ("benchmark #3", "name", "required"),
        ("benchmark #3", "model", "vgg99"),
        ("benchmark #3", "targets", "pdp11"),
        ("benchmark #3", "devices", "toaster"),
        ("benchmark #4 'ok-one'", "name", "duplicate"),
        ("benchmark #4 'ok-one'", "input_shape", "positive"),
    ]
    assert len(lines) == len(expect), lines
    for (who, field, why) in expect:
        assert any(ln.startswith(f"broken.toml: {who}: {field}: ") and why in ln for ln in lines), (who, field, lines)


@pytest.mark.parametrize(("text", "needle"), [
    ("[[benchmark]\nname=", "not valid TOML"),
    ('title = "x"\n', "no [[benchmark]] tables"),
    ('benchmark = "x"\n', "[[benchmark]]"),
])
def test_unusable_files(tmp_path, text, needle):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(SuiteError, match=needle.replace("[", r"\[")):
        load_suite(f)


def test_cli_broken_suite_is_a_clear_error_and_nothing_runs(tmp_path, capsys):
    f = tmp_path / "broken.toml"
    f.write_text(BROKEN)
    db = tmp_path / "r.db"
    code = main(["bench", "--suite", str(f), "--db", str(db), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hilprune: error: broken.toml: benchmark #2 'both': model/onnx:")
    assert "benchmark #4 'ok-one': name: duplicate" in err and "Traceback" not in err
    assert not db.exists()
    code = main(["bench", "--suite", str(tmp_path / "nowhere.toml"), "--db", str(db)])
    assert code == 2 and "nowhere.toml" in capsys.readouterr().err
    code = main(["bench", "--suite", str(REPO / "benchmarks" / "suites" / "nightly.toml"), "--target", "host",
                 "--db", str(db)])
    assert code == 2 and "--target is for --model/--onnx" in capsys.readouterr().err


REF_SUITE = ('[suite]\nreference = "{ref}"\n'
             '[[benchmark]]\nname = "ref-net"\nmodel = "resnet20"\ninput_shape = [1, 1, 16, 16]\n'
             '[[benchmark]]\nname = "big"\nmodel = "resnet20"\ninput_shape = [1, 1, 28, 28]\n')


def test_a_suite_names_its_reference_model(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(REF_SUITE.format(ref="ref-net"))
    suite = load_suite(f)
    assert suite.reference == "ref-net" and [b.name for b in suite.benchmarks] == ["ref-net", "big"]
    f.write_text(REF_SUITE.replace('[suite]\nreference = "{ref}"\n', ""))
    assert load_suite(f).reference is None


@pytest.mark.parametrize(("text", "line"), [
    (REF_SUITE.format(ref="nope"),
     "s.toml: [suite]: reference: 'nope' is not a benchmark of this suite; name one of: big, ref-net"),
    (REF_SUITE.replace('[suite]\nreference = "{ref}"\n', 'reference = "ref-net"\n'),
     ("s.toml: unknown top-level key 'reference'; expected [[benchmark]] tables and an optional [suite]; "
      "write it under [suite]: reference = \"NAME\"")),
    (REF_SUITE.replace('"{ref}"', "3"),
     "s.toml: [suite]: reference: must be the name of one of the suite's benchmarks, got 3"),
    ('[suite]\nreference = "only"\n[[benchmark]]\nname = "only"\nmodel = "resnet20"\ninput_shape = [1, 1, 16, 16]\n',
     ("s.toml: [suite]: reference: 'only' is the suite's only benchmark; a reference needs other benchmarks to "
      "compare (add one, or drop the reference)")),
])
def test_a_bad_reference_is_one_line(tmp_path, text, line):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_suite(f)
    assert str(info.value).splitlines() == [line]


def test_cli_bad_reference_exits_2_and_measures_nothing(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text(REF_SUITE.format(ref="nope"))
    db = tmp_path / "r.db"
    assert main(["bench", "--suite", str(f), "--db", str(db), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("hilprune: error: s.toml: [suite]: reference: 'nope' is not a benchmark of this suite; "
                           "name one of: big, ref-net") and not db.exists()
