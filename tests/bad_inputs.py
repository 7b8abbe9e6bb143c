"""The bad-input corpus: every case is a ``hilprune`` command line that must exit 2 with ONE
line on stderr naming the culprit (a flag, a field, a file). Shared by
``tests/test_bad_inputs.py`` and ``benchmarks/faults.py``.

Each case: ``(id, argv(files) -> list[str], words)``; ``files`` is a
:class:`Files` of prepared bad files under a temp dir, ``words`` must all
appear in the error line. Cases are chosen to fail before any training,
compiling or measuring starts.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TINY_ONNX_SHAPE = "1,1,8,8"
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPPgp4qkcIbmtC2aw8v/VjMl7NavOWq0BytDqyIQY+IG"  # a throw-away public key (valid, matches no server)


class Files:
    """Bad (and a few good) files the cases point at, made once under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.missing = root / "missing.toml"
        self.dir = root / "a-dir"
        self.dir.mkdir(exist_ok=True)
        self.key = root / "id_ed25519"
        self.key.write_text("not really a key, but a file\n")
        self.good_db = root / "good.db"
        self.corrupt_db = root / "corrupt.db"
        self.text_db = root / "text.db"
        self.text_db.write_text("this is not a database\n" * 20)
        self.foreign_db = root / "foreign.db"
        con = sqlite3.connect(self.foreign_db)
        con.execute("CREATE TABLE leases (board TEXT)")
        con.commit()
        con.close()
        self._make_corrupt()
        self.garbage_onnx = root / "garbage.onnx"
        self.garbage_onnx.write_bytes(b"\x00\x01garbage, not a protobuf\xff" * 20)
        self.empty_onnx = root / "empty.onnx"
        self.empty_onnx.write_bytes(b"")
        self.binary = root / "binary.toml"
        self.binary.write_bytes(b"\xff\xfe\x00\x01" * 50)

    def _make_corrupt(self) -> None:
        from harness.store import ResultsStore

        s = ResultsStore(self.corrupt_db)
        s.create_run("r", model="m", dataset="d", device="local", target="host", seed=0, config={"pad": "x" * 5000})
        for i in range(100):
            s.add_measurement(model="m", arch_signature=f"a{i}", device="local", target="host", backend="tvm",
                              tuning_key="untuned", source="measured", stats={"p50": 1.0}, latency_raw_ms=[1.0] * 50)
        s.close()
        con = sqlite3.connect(self.corrupt_db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        data = bytearray(self.corrupt_db.read_bytes())
        for off in range(4096 + 100, len(data), 4096):
            data[off:off + 64] = b"\xa5" * 64
        self.corrupt_db.write_bytes(bytes(data))

    def write(self, name: str, text: str) -> Path:
        p = self.root / name
        p.write_text(text)
        return p

    def board(self, **over) -> str:
        """One [[board]] table (valid unless ``over`` spoils it; a value None drops the key)."""
        fields = {"name": '"b1"', "host": '"127.0.0.1"', "port": "2222", "user": '"bench"',
                  "identity_file": f'"{self.key}"', "host_key": f'"{HOST_KEY}"',
                  "target": '"host"', "tags": '["loop"]'}
        fields.update(over)
        return "[[board]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)

    def inventory(self, name: str, farm: str = "", **over) -> str:
        return str(self.write(name, f"[farm]\n{farm}\n\n" + self.board(**over)))


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Files], list[str]]
    words: tuple[str, ...]


def _c(id_: str, argv: Callable[[Files], list[str]], *words: str) -> Case:
    return Case(id_, argv, words)


def _cfg(f: Files, name: str, text: str) -> list[str]:
    return ["search", "--config", str(f.write(name, text)), "--db", str(f.good_db), "--out", str(f.root / "runs")]


def _search(f: Files, *flags: str) -> list[str]:
    return ["search", *flags, "--db", str(f.good_db), "--out", str(f.root / "runs")]


def _inv(f: Files, name: str, farm: str = "", **over) -> list[str]:
    return ["devices", "list", "--inventory", f.inventory(name, farm, **over)]


def _suite(f: Files, name: str, text: str) -> list[str]:
    return ["bench", "--suite", str(f.write(name, text)), "--db", str(f.good_db)]


_T = "--target"
CASES: list[Case] = [
    # ---- search flags
    _c("search-episodes-0", lambda f: _search(f, "--episodes", "0"), "episodes"),
    _c("search-episodes-neg", lambda f: _search(f, "--episodes", "-3"), "episodes"),
    _c("search-episodes-text", lambda f: _search(f, "--episodes", "three"), "episodes"),
    _c("search-max-steps-text", lambda f: _search(f, "--max-steps", "x"), "max-steps"),
    _c("search-latency-target-0", lambda f: _search(f, "--latency-target", "0"), "latency"),
    _c("search-latency-target-nan", lambda f: _search(f, "--latency-target", "nan"), "latency"),
    _c("search-alpha-text", lambda f: _search(f, "--alpha", "much"), "alpha"),
    _c("search-step-fraction", lambda f: _search(f, "--step-fraction", "1.5"), "step"),
    _c("search-round-to-0", lambda f: _search(f, "--round-to", "0"), "round"),
    _c("search-model", lambda f: _search(f, "--model", "nosuchnet"), "nosuchnet"),
    _c("search-dataset", lambda f: _search(f, "--dataset", "nosuchdata"), "nosuchdata"),
    _c("search-dataset-path", lambda f: _search(f, "--dataset", f"cifar10:{f.root / 'nope'}"), "nope"),
    _c("search-device", lambda f: _search(f, "--device", "gpu9"), "gpu9"),
    _c("search-device-sim", lambda f: _search(f, "--device", "sim:nosuchboard"), "nosuchboard"),
    _c("search-device-ssh-no-inv", lambda f: _search(f, "--device", "ssh:b1"), "inventory"),
    _c("search-target-json", lambda f: _search(f, _T, '{"kind": "llvm"'), "target"),
    _c("search-target-preset", lambda f: _search(f, _T, "pdp11"), "pdp11"),
    _c("search-target-mcpu", lambda f: _search(f, _T, '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "notacpu"}'), "notacpu"),
    _c("search-importance", lambda f: _search(f, "--importance", "vibes"), "vibes"),
    _c("search-repeat-0", lambda f: _search(f, "--repeat", "0"), "repeat"),
    _c("search-drift-0", lambda f: _search(f, "--cache-drift-tolerance", "0"), "cache_drift_tolerance"),
    _c("search-resume-missing", lambda f: _search(f, "--resume", "no-such-run"), "no-such-run"),
    _c("search-db-dir", lambda f: ["search", "--db", str(f.dir), "--out", str(f.root / "runs")], str("a-dir")),
    _c("search-db-corrupt", lambda f: ["search", "--db", str(f.corrupt_db), "--out", str(f.root / "runs")],
       "corrupt.db", "corrupted"),
    _c("search-db-text", lambda f: ["search", "--db", str(f.text_db), "--out", str(f.root / "runs")],
       "text.db", "not an SQLite"),
    _c("search-reinforce", lambda f: _search(f, "--reinforce", "sometimes"), "reinforce"),
    # ---- --config files
    _c("config-missing", lambda f: _search(f, "--config", str(f.missing)), "missing.toml"),
    _c("config-not-toml", lambda f: _cfg(f, "c1.toml", "episodes = = 3\n"), "c1.toml", "TOML"),
    _c("config-unknown-key", lambda f: _cfg(f, "c2.toml", "epsiodes = 3\n"), "c2.toml", "epsiodes"),
    _c("config-number-for-string", lambda f: _cfg(f, "c3.toml", "model = 5\n"), "c3.toml", "model"),
    _c("config-list-for-name", lambda f: _cfg(f, "c4.toml", 'device = ["local"]\n'), "c4.toml", "device"),
    _c("config-string-for-int", lambda f: _cfg(f, "c5.toml", 'episodes = "three"\n'), "c5.toml", "episodes"),
    _c("config-search-not-table", lambda f: _cfg(f, "c6.toml", "search = 5\n"), "c6.toml", "search"),
    _c("config-binary", lambda f: _search(f, "--config", str(f.binary)), "binary.toml"),
    _c("config-dataset-number", lambda f: _cfg(f, "c7.toml", "dataset = 1.5\n"), "c7.toml", "dataset"),
    _c("config-target-table", lambda f: _cfg(f, "c8.toml", "[search]\ntarget = { kind = 3 }\n"), "c8.toml",
       "target"),
    _c("config-float-for-int", lambda f: _cfg(f, "c9.toml", "max_steps = 2.5\n"), "c9.toml", "max_steps"),
    # ---- inventories
    _c("inv-missing", lambda f: ["devices", "list", "--inventory", str(f.missing)], "missing.toml"),
    _c("inv-not-toml", lambda f: ["devices", "list", "--inventory", str(f.write("i0.toml", "[[board]\n"))],
       "i0.toml", "TOML"),
    _c("inv-binary", lambda f: ["devices", "list", "--inventory", str(f.binary)], "binary.toml"),
    _c("inv-no-boards", lambda f: ["devices", "list", "--inventory", str(f.write("i1.toml", "[farm]\n"))],
       "i1.toml", "board"),
    _c("inv-no-host", lambda f: _inv(f, "i2.toml", host=None), "i2.toml", "host"),
    _c("inv-port", lambda f: _inv(f, "i3.toml", port="70000"), "i3.toml", "port"),
    _c("inv-unknown-key", lambda f: _inv(f, "i4.toml", hots='"x"'), "i4.toml", "hots"),
    _c("inv-host-key-short", lambda f: _inv(f, "i17.toml", host_key='"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA"'),
       "i17.toml", "host_key", "not a valid"),
    _c("inv-host-key-b64", lambda f: _inv(f, "i5.toml", host_key='"ssh-ed25519 !!!notbase64"'), "i5.toml",
       "host_key"),
    _c("inv-identity-missing", lambda f: _inv(f, "i6.toml", identity_file='"/no/such/key"'), "i6.toml",
       "identity_file"),
    _c("inv-lease-db-dir", lambda f: _inv(f, "i7.toml", farm=f'lease_db = "{f.dir}"'), "i7.toml", "lease_db"),
    _c("inv-dead-link-0", lambda f: _inv(f, "i8.toml", farm="dead_link_s = 0"), "i8.toml", "dead_link_s"),
    _c("inv-target-no-arch", lambda f: _inv(f, "i9.toml", target='"vax"'), "i9.toml", "arch"),
    _c("inv-tags", lambda f: _inv(f, "i10.toml", tags='"loop"'), "i10.toml", "tags"),
    _c("inv-python-relative", lambda f: _inv(f, "i11.toml", python='"python3"'), "i11.toml", "python"),
    _c("inv-fallback", lambda f: _inv(f, "i12.toml", farm='fallback = "pray"'), "i12.toml", "fallback"),
    _c("inv-port-text", lambda f: _inv(f, "i13.toml", port='"22"'), "i13.toml", "port"),
    _c("inv-dead-link-text", lambda f: _inv(f, "i14.toml", farm='dead_link_s = "soon"'), "i14.toml",
       "dead_link_s"),
    _c("inv-check-lease-wait", lambda f: ["devices", "check", "--inventory", f.inventory("i15.toml"),
                                          "--lease-wait-s", "-5"], "lease-wait"),
    _c("search-inv-lease-db-dir", lambda f: _search(f, "--device", "ssh:b1", "--inventory",
                                                    f.inventory("i16.toml", farm=f'lease_db = "{f.dir}"')),
       "i16.toml", "lease_db"),
    # ---- suites
    _c("suite-missing", lambda f: ["bench", "--suite", str(f.missing), "--db", str(f.good_db)], "missing.toml"),
    _c("suite-not-toml", lambda f: _suite(f, "s0.toml", "[suite\n"), "s0.toml", "TOML"),
    _c("suite-unknown-key", lambda f: _suite(f, "s1.toml", '[suite]\nname = "n"\n\n[[benchmark]]\nname = "a"\n'
                                                           'model = "resnet20"\ninput_shape = [1, 1, 28, 28]\ntrgets = ["host"]\n'),
       "s1.toml",
       "trgets"),
    _c("suite-no-model", lambda f: _suite(f, "s2.toml", '[suite]\nname = "n"\n\n[[benchmark]]\nname = "a"\n'
                                                         'input_shape = [1, 1, 28, 28]\n'),
       "s2.toml", "model"),
    _c("suite-bad-shape", lambda f: _suite(f, "s3.toml", '[suite]\nname = "n"\n\n[[benchmark]]\nname = "a"\n'
                                                         'model = "resnet20"\ninput_shape = [1, "x"]\n'),
       "s3.toml", "input_shape"),
    _c("suite-db-corrupt", lambda f: ["bench", "--suite", str(f.write(
        "s4.toml", '[suite]\nname = "n"\n\n[[benchmark]]\nname = "a"\nmodel = "resnet20"\n'
                   'input_shape = [1, 1, 28, 28]\ntune_trials = 0\n')), "--db", str(f.corrupt_db)],
       "corrupt.db", "corrupted"),
    # ---- ONNX files
    _c("predict-missing", lambda f: ["predict", str(f.root / "nope.onnx")], "nope.onnx"),
    _c("predict-garbage", lambda f: ["predict", str(f.garbage_onnx)], "garbage.onnx"),
    _c("predict-empty", lambda f: ["predict", str(f.empty_onnx)], "empty.onnx"),
    _c("predict-dir", lambda f: ["predict", str(f.dir)], "a-dir"),
    _c("compile-onnx-garbage", lambda f: ["compile", "--onnx", str(f.garbage_onnx), _T, "host",
                                          "--input-shape", TINY_ONNX_SHAPE], "garbage.onnx"),
    _c("bench-onnx-missing", lambda f: ["bench", "--onnx", str(f.root / "nope.onnx"), _T, "host",
                                        "--db", str(f.good_db)], "nope.onnx"),
    _c("compile-input-shape", lambda f: ["compile", "--model", "resnet20", _T, "host", "--input-shape", "1,x,3"],
       "input-shape"),
    # ---- JSON targets
    _c("target-mcpu-unknown", lambda f: ["compile", "--model", "resnet20", _T,
                                         '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "bogus9000"}'],
       "bogus9000"),
    _c("target-mattr-string", lambda f: ["compile", "--model", "resnet20", _T,
                                         '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", '
                                         '"mattr": "+neon"}'], "mattr"),
    _c("target-mcpu-native", lambda f: ["compile", "--model", "resnet20", _T, '{"kind": "llvm", "mcpu": "native"}'],
       "native"),
    _c("target-mcpu-no-mtriple", lambda f: ["compile", "--model", "resnet20", _T,
                                            '{"kind": "llvm", "mcpu": "cortex-a72"}'], "mtriple"),
    _c("target-list", lambda f: ["compile", "--model", "resnet20", _T, "[1, 2]"], "target"),
    _c("target-kind", lambda f: ["compile", "--model", "resnet20", _T, '{"kind": "abacus"}'], "abacus"),
    # ---- results databases
    _c("compare-db-corrupt", lambda f: ["bench", "compare", "--db", str(f.corrupt_db)], "corrupt.db", "corrupted"),
    _c("compare-db-text", lambda f: ["bench", "compare", "--db", str(f.text_db)], "text.db", "SQLite"),
    _c("compare-db-foreign", lambda f: ["bench", "compare", "--db", str(f.foreign_db)], "foreign.db"),
    _c("report-db-corrupt", lambda f: ["report", "--db", str(f.corrupt_db), "--out", str(f.root / "rep")],
       "corrupt.db", "corrupted"),
    _c("report-db-dir", lambda f: ["report", "--db", str(f.dir), "--out", str(f.root / "rep")], "a-dir"),
    _c("calibrate-db-corrupt", lambda f: ["sim", "calibrate", "--profile", "host", "--from-db", "--db",
                                          str(f.corrupt_db), "--out", str(f.root / "p.json")], "corrupt.db"),
    _c("calibrate-csv-missing", lambda f: ["sim", "calibrate", "--profile", "host", "--from",
                                           str(f.root / "nope.csv"), "--out", str(f.root / "p.json")], "nope.csv"),
    _c("bench-db-corrupt", lambda f: ["bench", "--model", "resnet20", "--input-shape", "1,1,28,28", _T, "host",
                                      "--tune-trials", "0", "--db", str(f.corrupt_db)], "corrupt.db", "corrupted"),
    _c("compare-threshold", lambda f: ["bench", "compare", "--db", str(f.good_db), "--threshold", "-1"],
       "threshold"),
    _c("train-epochs", lambda f: ["train", "--epochs", "-1", "--cache-dir", str(f.root / "cache")], "epochs"),
]


@dataclass
class Outcome:
    """One case run: exit status, stderr lines, and whether a traceback showed."""

    code: int | None
    lines: list[str]
    traceback: bool

    def clear(self, words: tuple[str, ...]) -> bool:
        """Exit 2, exactly one line, naming every word of the culprit, no traceback."""
        return (self.code == 2 and len(self.lines) == 1 and not self.traceback
                and all(w in self.lines[0] for w in words))


def run_case(case: Case, files: Files, capsys=None) -> Outcome:
    """Run one case in this process with ``harness.cli.main`` (stderr captured)."""
    import io
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    from harness.cli import main

    argv = case.argv(files)
    err, out = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers = list(root.handlers)
    tb = False
    try:
        with redirect_stderr(err), redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # noqa: BLE001 - a traceback is what the corpus hunts
                traceback.print_exc()
                code, tb = None, True
    finally:
        root.handlers[:] = handlers
    text = err.getvalue()
    tb = tb or "Traceback (most recent call last)" in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return Outcome(code, lines, tb)


if __name__ == "__main__":  # quick look: python -m tests.bad_inputs
    import tempfile

    files = Files(Path(tempfile.mkdtemp()))
    for case in CASES:
        o = run_case(case, files)
        print(("ok  " if o.clear(case.words) else "BAD ") + f"{case.id}: {o.code} {json.dumps(o.lines)[:300]}",
              file=sys.__stdout__, flush=True)
