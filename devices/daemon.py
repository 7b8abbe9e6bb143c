#!/usr/bin/env python3
"""hilprune device daemon: times compiled artifacts, speaking JSON lines.

A self-contained program of two files: this one and ``manifest.py`` beside
it (the artifact manifest's one reader, stdlib only). It imports only the
Python standard library, numpy, that sibling and, lazily, ``tvm.runtime`` /
``onnxruntime``; never the hilprune packages, because it is uploaded to
boards with its sibling alone (DESIGN.md §5).

Run: ``python daemon.py``. Protocol version 1: one JSON object per line on
stdin, one JSON reply per line on stdout (flushed). Nothing else ever goes to
stdout: at start the daemon moves its protocol stream to a private copy of
fd 1 and points fd 1 at stderr, so stray prints (ours, TVM's, ORT's) land in
stderr. Logs go to stderr.

Requests (``id`` is echoed back as given; any JSON value)::

    {"v":1,"id":..,"op":"hello"}
    {"v":1,"id":..,"op":"measure","artifact":"/abs/dir","backend":"tvm"|"onnxruntime",
     "warmup":5,"number":10,"repeat":30,"min_repeat_ms":50,"seed":0,"num_threads":null}
    {"v":1,"id":..,"op":"time_func","lib":"/abs/x.so","args":[["float32",[1,8]],..],
     "number":3,"repeat":1,"min_repeat_ms":50,"seed":0}
        optional "sha256": the library's digest (checked before loading), "remove": true (delete it once loaded)
        -> {"costs_s":[...]}: MetaSchedule's measurement of one tuning candidate
        (a TIR module's entry function, random arguments, the runtime's
        ``time_evaluator``), for the board-backed tuning runner.
    {"v":1,"id":..,"op":"measure_interleaved","artifacts":["/abs/ref","/abs/b",..],
     "backend":"tvm","warmup":5,"numbers":[0,0,..],"min_repeat_ms":10,"rounds":8,
     "first_round":0,"block_warmup":1,"order":"rotate"|"shuffle","seed":0,"num_threads":null}
        -> 2..4 artifacts (the first is the reference) timed in alternating
        blocks, ``rounds`` rounds of one block each; see
        :meth:`Daemon.measure_interleaved` for the result.
    {"v":1,"id":..,"op":"bye"}              -> ok, then exit 0 (EOF also exits 0)
    {"v":1,"id":..,"op":"sleep","s":1.5,"child":false}
        TEST-ONLY: sleep ``s`` seconds (max 3600) before replying; with
        ``"child": true`` the sleep runs in a child process of the daemon (to
        test that a timeout kills the whole process group).

Replies: ``{"v":1,"id":..,"ok":true,"result":{...}}`` or
``{"v":1,"id":..,"ok":false,"error":{"kind":K,"message":..}}`` with K one of
``bad_request`` (malformed request), ``load_failed`` (artifact missing or
unloadable), ``run_failed`` (the model raised). The daemon keeps serving:
every line gets one reply, whatever it holds -- invalid UTF-8, JSON nested
deeper than the parser allows (``RecursionError``), a line over
``MAX_LINE_BYTES`` (answered ``bad_request`` and skipped to its newline), an
``id`` that cannot be echoed (echoed as null). Blank lines are the
controller's heartbeat (see ``watchdog.py``) and get no reply.

Containment: the files a manifest names (``library``, ``params``, ``onnx``)
must resolve (symlinks followed) inside the artifact directory, else
``load_failed``.

Loaded models: at most ``HILPRUNE_MAX_LOADED_MODELS`` (environment, default
4; interleaved A/B rounds need 2 at once) stay loaded; the least recently
used is dropped first.

Measure result: ``latency_ms`` (raw per-repeat ms = block time / number),
``warmup_ms`` (per call), ``number``, ``output_sha256`` (sha256 of the output's
C-order bytes), ``output_head`` (first 16 values), ``output_shape``,
``output_dtype``, ``device_state_before`` / ``_after``, ``backend``,
``load_s`` (0 when the artifact came from this session's cache),
``first_call_ms`` (the untimed call that produced the output).

Timing: ``time.perf_counter_ns`` around blocks of ``number`` calls made from
Python, the device synchronised before and after each block (a no-op on CPU,
``dev.sync()`` on CUDA). ``VirtualMachine.time_evaluator`` does work in 0.27,
but it exists only for TVM; one timer for both backends keeps the TVM and ONNX
Runtime numbers of a candidate comparable (both include the same small Python
call overhead, ~µs), and gives us warm-ups apart and our own number
calibration. The input tensor is placed on the device once, untimed.

Input: ``numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)``
with shape and dtype from the manifest. TVM calls ``main(input, *params)``
with params from ``params.npz`` in sorted key order ("p0000", "p0001", ...);
if ``main`` returns a tuple, its first element is the output.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback

import numpy as np

# The manifest reader is the one file uploaded beside this one (devices/manifest.py: stdlib only).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from manifest import ManifestError, read_manifest as _read_manifest  # noqa: E402

PROTOCOL_VERSION = 1
MAX_NUMBER = 1_000_000  # cap on the calibrated number of calls per block
MAX_SLEEP_S = 3600.0
MAX_LINE_BYTES = 1 << 20  # longest request line (bytes); real requests are < 1 KB
DEFAULT_MAX_LOADED = 4  # loaded models kept (LRU); HILPRUNE_MAX_LOADED_MODELS overrides
MAX_INTERLEAVED = 4  # artifacts per measure_interleaved request (the session keeps >= 4 loaded)
MAX_ROUNDS = 10_000  # rounds per measure_interleaved request


def log(msg: str) -> None:
    """Write one log line to stderr (never stdout)."""
    sys.stderr.write(f"[hilprune-daemon {os.getpid()}] {msg}\n")
    sys.stderr.flush()


class RequestError(Exception):
    """A request that gets an ok:false reply; ``kind`` is the error kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# ----------------------------------------------------------------- device state

def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_state() -> dict:
    """Facts that make a timing valid or not; missing facts are simply absent.

    Keys (each only when readable): ``governor``, ``cur_freq_khz``,
    ``max_freq_khz`` (cpu0 cpufreq), ``temps_c`` ({thermal zone type: °C}),
    ``throttled`` (int bits of ``vcgencmd get_throttled``, Raspberry Pi),
    ``nvpmodel`` (``nvpmodel -q`` text, Jetson), ``loadavg`` (1/5/15 min).
    """
    state: dict = {}
    base = "/sys/devices/system/cpu/cpu0/cpufreq/"
    gov = _read(base + "scaling_governor")
    if gov:
        state["governor"] = gov
    for key, fname in (("cur_freq_khz", "scaling_cur_freq"), ("max_freq_khz", "scaling_max_freq")):
        val = _read(base + fname)
        if val and val.isdigit():
            state[key] = int(val)
    temps = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read(os.path.join(zone, "temp"))
        try:
            milli = int(raw) if raw is not None else None
        except ValueError:
            milli = None
        if milli is not None:
            kind = _read(os.path.join(zone, "type")) or os.path.basename(zone)
            temps[f"{os.path.basename(zone)}:{kind}"] = milli / 1000.0
    if temps:
        state["temps_c"] = temps
    thr = _run(["vcgencmd", "get_throttled"])
    if thr and "=" in thr:
        try:
            state["throttled"] = int(thr.split("=", 1)[1], 16)
        except ValueError:
            pass
    nvp = _run(["nvpmodel", "-q"])
    if nvp:
        state["nvpmodel"] = nvp
    try:
        state["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    return state


# ----------------------------------------------------------------------- hello

def _dist_version(*names: str) -> str | None:
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover
        return None
    for name in names:
        try:
            return metadata.version(name)
        except Exception:  # noqa: BLE001 - any metadata problem means "unknown"
            continue
    return None


#: x86 /proc/cpuinfo flags that decide the ISA level of generated code (x86-64 psABI levels v2-v4).
_X86_FLAGS = ("sse4_2", "popcnt", "avx", "avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq")


def cpu_facts() -> dict:
    """What a compiler needs to know of this CPU, from ``/proc/cpuinfo`` (Linux; empty elsewhere).

    Returns:
        ``{"cpu_model": str|None, "cpu_part": "0xd08"|None (ARM "CPU part"), "cpu_implementer": str|None,
        "cpu_flags": [x86 flags among _X86_FLAGS]}``; the controller derives the ``host``
        target of a board from them (``harness.compile.targets.board_target``).
    """
    facts = {"cpu_model": None, "cpu_part": None, "cpu_implementer": None, "cpu_flags": []}
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "model name" and facts["cpu_model"] is None:
            facts["cpu_model"] = value
        elif key == "cpu part" and facts["cpu_part"] is None:
            facts["cpu_part"] = value.lower()
        elif key == "cpu implementer" and facts["cpu_implementer"] is None:
            facts["cpu_implementer"] = value.lower()
        elif key == "flags" and not facts["cpu_flags"]:
            have = set(value.split())
            facts["cpu_flags"] = [f for f in _X86_FLAGS if f in have]
    return facts


def hello() -> dict:
    """Versions and machine facts of this daemon's host.

    Versions come from package metadata (cheap); TVM is imported only when it
    has no metadata (a runtime built from source), so hello stays fast.
    """
    tvm_version = _dist_version("apache-tvm", "tvm")
    if tvm_version is None:
        try:
            import tvm  # noqa: PLC0415 - lazy: absent on some boards

            tvm_version = str(tvm.__version__)
        except Exception as exc:  # noqa: BLE001
            log(f"tvm unavailable: {exc!r}")
    ort_version = _dist_version("onnxruntime", "onnxruntime-gpu")
    libc, libc_ver = platform.libc_ver()
    return {
        "protocol": PROTOCOL_VERSION,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tvm": tvm_version,
        "onnxruntime": ort_version,
        "machine": platform.machine(),
        "glibc": libc_ver if libc == "glibc" else None,
        "cpu_count": os.cpu_count(),
        **cpu_facts(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


# ------------------------------------------------------------------- artifacts

def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(artifact: str):
    """Load and check ``manifest.json`` through the shared reader (``manifest.py``, uploaded beside this file).

    Returns:
        The ``Manifest`` (its ``sha256`` is that of the file's bytes).

    Raises:
        RequestError(load_failed): missing dir/manifest, bad JSON, bad fields.
    """
    try:
        return _read_manifest(artifact)
    except ManifestError as exc:
        raise RequestError("load_failed", str(exc)) from None


def _inside(artifact: str, name, field: str) -> str:
    """``artifact/name`` if it resolves (symlinks followed) inside ``artifact``.

    Raises:
        RequestError(load_failed): ``name`` is not a string, or it points outside
            the artifact directory (``..``, an absolute path, a symlink out).
    """
    if not isinstance(name, str) or not name:
        raise RequestError("load_failed", f"manifest field {field!r} must be a file name, got {name!r}")
    root = os.path.realpath(artifact)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root or path == root:
        raise RequestError("load_failed", f"manifest field {field!r} = {name!r} points outside the artifact "
                                          f"directory {artifact}; refused")
    return path


class Loaded:
    """A loaded artifact: ``call()`` runs the model once, ``sync()`` waits for the device."""

    def __init__(self, call, sync, load_s: float) -> None:
        self.call = call
        self.sync = sync
        self.load_s = load_s


def _make_input(manifest, seed: int) -> np.ndarray:
    inp = manifest.input
    return np.random.default_rng(seed).standard_normal(inp.shape).astype(inp.dtype)


def load_tvm(artifact: str, manifest, seed: int) -> Loaded:
    """Load the Relax VM executable (runtime-only API) and bind the fixed input."""
    t0 = time.perf_counter()
    lib_name = manifest.library
    if lib_name is None:
        raise RequestError("load_failed", "the artifact has no TVM library (a graph-only artifact); "
                                          "measure it with backend 'onnxruntime'")
    lib_path = _inside(artifact, lib_name, "library")
    if not os.path.isfile(lib_path):
        raise RequestError("load_failed", f"library {lib_path} does not exist")
    want = manifest.library_sha256
    if isinstance(want, str) and _sha256_file(lib_path) != want:
        raise RequestError("load_failed", f"library {lib_path} does not match library_sha256 of the manifest")
    try:
        import tvm.runtime as rt  # noqa: PLC0415 - lazy, runtime-only API
        from tvm.runtime.vm import VirtualMachine  # noqa: PLC0415
    except Exception as exc:  # noqa: BLE001
        raise RequestError("load_failed", f"tvm runtime not importable: {exc!r}") from None
    kind = manifest.device_kind
    try:
        dev = rt.cpu(0) if kind == "cpu" else rt.cuda(0)
        lib = rt.load_module(lib_path)
        vm = VirtualMachine(lib, dev)
        params = []
        pname = manifest.params
        if pname:
            with np.load(_inside(artifact, pname, "params")) as npz:
                params = [rt.tensor(npz[k], dev) for k in sorted(npz.files)]
        x = rt.tensor(_make_input(manifest, seed), dev)
        main = vm["main"]
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise RequestError("load_failed", f"cannot load {lib_path}: {type(exc).__name__}: {exc}") from None

    def call():
        out = main(x, *params)
        if not hasattr(out, "numpy"):  # a tuple / Array of outputs: the first is the output
            out = out[0]
        return out

    sync = dev.sync if kind == "cuda" else (lambda: None)
    return Loaded(call, sync, time.perf_counter() - t0)


def load_onnxruntime(artifact: str, manifest, seed: int, num_threads: int | None) -> Loaded:
    """Create an ONNX Runtime CPU session on the artifact's ONNX file."""
    t0 = time.perf_counter()
    name = manifest.onnx
    if name is None:
        raise RequestError("load_failed", "manifest has no 'onnx' file")
    path = _inside(artifact, name, "onnx")
    if not os.path.isfile(path):
        raise RequestError("load_failed", f"ONNX file {path} does not exist")
    try:
        import onnxruntime as ort  # noqa: PLC0415 - lazy
    except Exception as exc:  # noqa: BLE001
        raise RequestError("load_failed", f"onnxruntime not importable: {exc!r}") from None
    try:
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
            opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        in_name = manifest.input.name or sess.get_inputs()[0].name
        feeds = {in_name: _make_input(manifest, seed)}
    except Exception as exc:  # noqa: BLE001
        raise RequestError("load_failed", f"cannot load {path}: {type(exc).__name__}: {exc}") from None

    def call():
        return sess.run(None, feeds)[0]

    return Loaded(call, lambda: None, time.perf_counter() - t0)


# --------------------------------------------------------------------- measure

_FIELDS = {  # name -> (types, check, description)
    "artifact": (str, lambda v: os.path.isabs(v), "an absolute path"),
    "backend": (str, lambda v: v in ("tvm", "onnxruntime"), "'tvm' or 'onnxruntime'"),
    "warmup": (int, lambda v: v >= 0, "an int >= 0"),
    "number": (int, lambda v: v >= 0, "an int >= 0 (0: derive from min_repeat_ms)"),
    "repeat": (int, lambda v: v >= 1, "an int >= 1"),
    "min_repeat_ms": ((int, float), lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    "seed": (int, lambda v: True, "an int"),
}
_DEFAULTS = {"backend": "tvm", "warmup": 5, "number": 10, "repeat": 30, "min_repeat_ms": 50.0, "seed": 0}


def _field(req: dict, name: str):
    if name not in req:
        if name in _DEFAULTS:
            return _DEFAULTS[name]
        raise RequestError("bad_request", f"measure: missing field {name!r}")
    types, check, desc = _FIELDS[name]
    val = req[name]
    if isinstance(val, bool) or not isinstance(val, types) or not check(val):
        raise RequestError("bad_request", f"measure: field {name!r} must be {desc}, got {val!r}")
    return val


def _first_call_and_warmup(loaded: Loaded, warmup: int) -> tuple:
    """Run once untimed-in-stats (the output to check and the first call's ms), then ``warmup`` calls.

    Returns:
        (output as a C-contiguous numpy array, first call in ms, per-call warm-up ms list).
    """
    t0 = time.perf_counter_ns()
    out = loaded.call()
    loaded.sync()
    first_call_ms = (time.perf_counter_ns() - t0) / 1e6
    out_np = np.ascontiguousarray(out.numpy() if hasattr(out, "numpy") else np.asarray(out))
    warmup_ms = []
    for _ in range(warmup):
        t0 = time.perf_counter_ns()
        loaded.call()
        loaded.sync()
        warmup_ms.append((time.perf_counter_ns() - t0) / 1e6)
    return out_np, first_call_ms, warmup_ms


class Daemon:
    """One session: dispatches requests and caches loaded artifacts."""

    def __init__(self, max_loaded: int | None = None) -> None:
        if max_loaded is None:
            try:
                max_loaded = int(os.environ.get("HILPRUNE_MAX_LOADED_MODELS", DEFAULT_MAX_LOADED))
            except ValueError:
                max_loaded = DEFAULT_MAX_LOADED
        self.max_loaded = max(2, max_loaded)
        self.cache: collections.OrderedDict[tuple, Loaded] = collections.OrderedDict()

    def _remember(self, key: tuple, loaded: Loaded) -> None:
        """Keep ``loaded`` as the most recently used; drop the least recently used past ``max_loaded``."""
        self.cache[key] = loaded
        self.cache.move_to_end(key)
        while len(self.cache) > self.max_loaded:
            old, _ = self.cache.popitem(last=False)
            log(f"unloaded {old[0]} ({old[2]}): over {self.max_loaded} loaded models")

    def load(self, artifact: str, backend: str, seed: int, num_threads) -> tuple:
        """The loaded artifact (from this session's cache when its manifest is unchanged) and the seconds
        its load took now (0.0 from the cache).

        Raises:
            RequestError: load_failed (manifest, library, ONNX file).
        """
        manifest = read_manifest(artifact)
        key = (os.path.realpath(artifact), manifest.sha256, backend, seed, num_threads)
        loaded = self.cache.get(key)
        if loaded is not None:
            self.cache.move_to_end(key)  # most recently used
            return loaded, 0.0
        loaded = (load_tvm(artifact, manifest, seed) if backend == "tvm"
                  else load_onnxruntime(artifact, manifest, seed, num_threads))
        self._remember(key, loaded)  # an interleaved request holds its own references while it runs
        log(f"loaded {artifact} ({backend}) in {loaded.load_s:.3f} s")
        return loaded, loaded.load_s

    def measure(self, req: dict) -> dict:
        artifact = _field(req, "artifact")
        backend = _field(req, "backend")
        warmup = _field(req, "warmup")
        number = _field(req, "number")
        repeat = _field(req, "repeat")
        min_repeat_ms = float(_field(req, "min_repeat_ms"))
        seed = _field(req, "seed")
        num_threads = _request_threads("measure", req.get("num_threads"), backend)

        loaded, load_s = self.load(artifact, backend, seed, num_threads)

        state_before = device_state()
        try:
            out_np, first_call_ms, warmup_ms = _first_call_and_warmup(loaded, warmup)
            if number == 0:
                number = self._calibrate(loaded, min_repeat_ms)
            latency_ms = []
            call, sync = loaded.call, loaded.sync
            for _ in range(repeat):
                sync()
                t0 = time.perf_counter_ns()
                for _ in range(number):
                    call()
                sync()
                latency_ms.append((time.perf_counter_ns() - t0) / 1e6 / number)
        except Exception as exc:  # noqa: BLE001
            log(traceback.format_exc())
            raise RequestError("run_failed", f"{backend} run failed: {type(exc).__name__}: {exc}") from None
        state_after = device_state()
        flat = out_np.reshape(-1)
        return {
            "latency_ms": latency_ms,
            "warmup_ms": warmup_ms,
            "number": number,
            "output_sha256": hashlib.sha256(out_np.tobytes()).hexdigest(),
            "output_head": [float(v) for v in flat[:16]],
            "output_shape": list(out_np.shape),
            "output_dtype": str(out_np.dtype),
            "device_state_before": state_before,
            "device_state_after": state_after,
            "backend": backend,
            "load_s": load_s,
            "first_call_ms": first_call_ms,
        }

    def measure_interleaved(self, req: dict) -> dict:
        """Time 2..MAX_INTERLEAVED artifacts in alternating blocks: ``rounds`` rounds, one block of each per round.

        Why blocks alternate: on a shared machine (or a board with a drifting
        temperature or a neighbour's cron job) one artifact's absolute latency
        moves by tens of percent over minutes; two artifacts timed in short
        alternating blocks see the same phase of that noise, so the ratio of
        the blocks of one round stays put (DESIGN.md §5 "Rank on ratios").

        Steps: load every artifact (this session's cache, as ``measure``);
        per artifact, apart: one untimed call (its output is hashed), then
        ``warmup`` timed-apart calls, then (``numbers[i] == 0``) calibration
        of its calls per block to ``min_repeat_ms``; then the rounds. Round
        ``r`` (numbered from ``first_round``, so a controller asking for more
        rounds continues the pattern) times one block of each artifact in the
        order ``rotate``: ``[(r + k) % n for k in range(n)]`` (n consecutive
        rounds put each artifact once in each position, so a position effect
        cancels over a cycle), or ``shuffle``:
        ``numpy.random.default_rng([seed, r]).permutation(n)``.

        The adaptive stop (bootstrap interval of the ratio) is NOT decided
        here: the daemon only times, the controller
        (``devices/interleaved.py``) computes the statistics and asks for
        more rounds; see that module for why.

        Request fields: ``artifacts`` (list of 2..MAX_INTERLEAVED absolute
        dirs, the first is the reference), ``backend``, ``warmup`` (calls per
        artifact, >= 0), ``numbers`` (calls per block per artifact; 0 =
        calibrate; default all 0), ``min_repeat_ms`` (block length when
        calibrating, ms), ``rounds`` (1..MAX_ROUNDS), ``first_round`` (>= 0),
        ``block_warmup`` (untimed calls before each block, default 0: the
        first call after another model ran refills the caches),
        ``order``, ``seed`` (input seed; also the shuffle's), ``num_threads``.

        Returns:
            ``{"artifacts": [{"latency_ms": [per round, ms per call],
            "warmup_ms", "number", "output_sha256", "output_head",
            "output_shape", "output_dtype", "load_s", "first_call_ms"}, ...],
            "order": [[artifact index per position] per round], "round_at":
            [Unix time (s) at each round's start], "rounds",
            "first_round", "backend", "device_state_before",
            "device_state_after", "started_at", "finished_at"}`` (the two
            times: this host's Unix time, s).

        Raises:
            RequestError: bad_request (fields), load_failed, run_failed.
        """
        arts = req.get("artifacts")
        if (not isinstance(arts, list) or not 2 <= len(arts) <= MAX_INTERLEAVED
                or not all(isinstance(a, str) and os.path.isabs(a) for a in arts)):
            raise RequestError("bad_request", f"measure_interleaved: 'artifacts' must be a list of 2.."
                                              f"{MAX_INTERLEAVED} absolute paths (the first is the reference), "
                                              f"got {str(arts)[:200]}")
        n = len(arts)
        backend = _field(req, "backend")
        warmup = _field(req, "warmup")
        min_repeat_ms = float(_field(req, "min_repeat_ms"))
        seed = _field(req, "seed")
        numbers = req.get("numbers", [0] * n)
        if (not isinstance(numbers, list) or len(numbers) != n
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_NUMBER
                           for v in numbers)):
            raise RequestError("bad_request", f"measure_interleaved: 'numbers' must be {n} ints in "
                                              f"[0, {MAX_NUMBER}] (0: calibrate), got {numbers!r}")
        ints = {}
        for name, default, lo, hi in (("rounds", 8, 1, MAX_ROUNDS), ("first_round", 0, 0, 1 << 40),
                                      ("block_warmup", 0, 0, 1000)):
            v = req.get(name, default)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise RequestError("bad_request", f"measure_interleaved: {name!r} must be an int in "
                                                  f"[{lo}, {hi}], got {v!r}")
            ints[name] = v
        order_kind = req.get("order", "rotate")
        if order_kind not in ("rotate", "shuffle"):
            raise RequestError("bad_request", f"measure_interleaved: 'order' must be 'rotate' or 'shuffle', "
                                              f"got {order_kind!r}")
        num_threads = _request_threads("measure_interleaved", req.get("num_threads"), backend)

        loaded_all, load_s = [], []
        for artifact in arts:
            loaded, took = self.load(artifact, backend, seed, num_threads)
            loaded_all.append(loaded)
            load_s.append(took)

        state_before = device_state()
        started_at = time.time()
        per = []
        try:
            for loaded, number in zip(loaded_all, numbers):  # each warmed up apart, then calibrated
                out_np, first_call_ms, warmup_ms = _first_call_and_warmup(loaded, warmup)
                if number == 0:
                    number = self._calibrate(loaded, min_repeat_ms)
                per.append({"out": out_np, "first_call_ms": first_call_ms, "warmup_ms": warmup_ms,
                            "number": number, "latency_ms": []})
            orders, round_at = [], []
            for r in range(ints["first_round"], ints["first_round"] + ints["rounds"]):
                round_at.append(time.time())
                if order_kind == "rotate":
                    order = [(r + k) % n for k in range(n)]
                else:
                    order = [int(i) for i in np.random.default_rng([seed & 0xFFFFFFFF, r]).permutation(n)]
                orders.append(order)
                for i in order:
                    call, sync, number = loaded_all[i].call, loaded_all[i].sync, per[i]["number"]
                    for _ in range(ints["block_warmup"]):  # untimed: refill caches after the other model
                        call()
                    sync()
                    t0 = time.perf_counter_ns()
                    for _ in range(number):
                        call()
                    sync()
                    per[i]["latency_ms"].append((time.perf_counter_ns() - t0) / 1e6 / number)
        except Exception as exc:  # noqa: BLE001
            log(traceback.format_exc())
            raise RequestError("run_failed", f"{backend} run failed: {type(exc).__name__}: {exc}") from None
        finished_at = time.time()
        state_after = device_state()
        results = []
        for p, took in zip(per, load_s):
            out_np = p["out"]
            results.append({
                "latency_ms": p["latency_ms"], "warmup_ms": p["warmup_ms"], "number": p["number"],
                "output_sha256": hashlib.sha256(out_np.tobytes()).hexdigest(),
                "output_head": [float(v) for v in out_np.reshape(-1)[:16]],
                "output_shape": list(out_np.shape), "output_dtype": str(out_np.dtype),
                "load_s": took, "first_call_ms": p["first_call_ms"],
            })
        return {"artifacts": results, "order": orders, "round_at": round_at, "rounds": ints["rounds"],
                "first_round": ints["first_round"], "backend": backend,
                "device_state_before": state_before, "device_state_after": state_after,
                "started_at": started_at, "finished_at": finished_at}

    @staticmethod
    def _calibrate(loaded: Loaded, min_repeat_ms: float) -> int:
        """Smallest-ish number of calls whose block lasts >= min_repeat_ms (grows x2..x10)."""
        number = 1
        while True:
            loaded.sync()
            t0 = time.perf_counter_ns()
            for _ in range(number):
                loaded.call()
            loaded.sync()
            block_ms = (time.perf_counter_ns() - t0) / 1e6
            if block_ms >= min_repeat_ms or number >= MAX_NUMBER:
                return number
            grow = min_repeat_ms / max(block_ms, 1e-6) * 1.1
            number = min(MAX_NUMBER, max(number * 2, min(number * 10, math.ceil(number * grow))))

    def handle(self, line: bytes) -> tuple[dict, bool]:
        """Answer one request line; returns (reply, keep_serving). Never raises."""
        try:
            req = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            what = "JSON nested too deep" if isinstance(exc, RecursionError) else f"not JSON: {exc}"
            return _err(None, "bad_request", what), True
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the daemon answers
            return _err(None, "bad_request", f"not JSON: {type(exc).__name__}"), True
        if not isinstance(req, dict):
            return _err(None, "bad_request", "a request must be a JSON object"), True
        rid = req.get("id")
        if req.get("v") != PROTOCOL_VERSION:
            return _err(rid, "bad_request", f"protocol version {req.get('v')!r} not supported; "
                                            f"this daemon speaks v={PROTOCOL_VERSION}"), True
        op = req.get("op")
        try:
            if op == "hello":
                return _ok(rid, hello()), True
            if op == "measure":
                return _ok(rid, self.measure(req)), True
            if op == "time_func":
                return _ok(rid, time_func(req)), True
            if op == "measure_interleaved":
                return _ok(rid, self.measure_interleaved(req)), True
            if op == "bye":
                return _ok(rid, {}), False
            if op == "sleep":  # TEST-ONLY, see module docstring
                return _ok(rid, self.sleep(req)), True
            return _err(rid, "bad_request", f"unknown op {op!r}; ops: hello, measure, measure_interleaved, "
                                            f"time_func, bye"), True
        except RequestError as exc:
            return _err(rid, exc.kind, exc.message), True
        except Exception as exc:  # noqa: BLE001 - never crash on a request (RecursionError included)
            log(traceback.format_exc())
            return _err(rid, "run_failed", f"internal error: {type(exc).__name__}: {str(exc)[:500]}"), True

    @staticmethod
    def sleep(req: dict) -> dict:
        s = req.get("s")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= MAX_SLEEP_S:
            raise RequestError("bad_request", f"sleep: 's' must be a number in [0, {MAX_SLEEP_S}]")
        if req.get("child"):
            subprocess.run([sys.executable, "-c", f"import time; time.sleep({float(s)!r})"], check=False)
        else:
            time.sleep(s)
        return {"slept_s": s}


def _request_threads(op: str, num_threads, backend: str):
    """Check ``num_threads`` of a ``measure`` or ``measure_interleaved`` request (``op``) and apply it.

    TVM reads TVM_NUM_THREADS once, at import: a request for other threads
    than the running runtime's is refused (the controller then starts a daemon
    with those threads).

    Raises:
        RequestError(bad_request): not null or an int >= 1, or TVM already runs with other threads.
    """
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise RequestError("bad_request", f"{op}: field 'num_threads' must be null or an int >= 1, "
                                          f"got {num_threads!r}")
    if backend == "tvm" and num_threads is not None and str(num_threads) != os.environ.get("TVM_NUM_THREADS"):
        if "tvm" in sys.modules:
            raise RequestError("bad_request", f"{op}: num_threads={num_threads} but this daemon's "
                                              f"TVM runtime started with TVM_NUM_THREADS="
                                              f"{os.environ.get('TVM_NUM_THREADS')}; start a daemon with "
                                              f"TVM_NUM_THREADS={num_threads} in its environment")
        os.environ["TVM_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(num_threads)
    return num_threads


def time_func(req: dict) -> dict:
    """Time the entry function of a compiled TIR module on random arguments (tuning runner).

    Raises:
        RequestError: bad_request (fields), load_failed (library), run_failed.
    """
    lib_path = req.get("lib")
    args = req.get("args")
    if not isinstance(lib_path, str) or not os.path.isabs(lib_path) or not os.path.isfile(lib_path):
        raise RequestError("bad_request" if not isinstance(lib_path, str) else "load_failed",
                           f"time_func: 'lib' must be an existing absolute path, got {lib_path!r}")
    if not isinstance(args, list) or not all(
            isinstance(a, list) and len(a) == 2 and isinstance(a[0], str) and isinstance(a[1], list)
            and all(isinstance(d, int) and d >= 0 for d in a[1]) for a in args):
        raise RequestError("bad_request", "time_func: 'args' must be [[dtype, [dims...]], ...]")
    opts = {}
    for name, default, lo in (("number", 3, 1), ("repeat", 1, 1), ("min_repeat_ms", 0, 0), ("seed", 0, 0)):
        v = req.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise RequestError("bad_request", f"time_func: {name!r} must be an int >= {lo}, got {v!r}")
        opts[name] = v
    if req.get("remove") is True and not (re.fullmatch(r"tune-[0-9a-f]{16}\.so", os.path.basename(lib_path))
                                          and not os.path.islink(lib_path)):
        # the runner uploads trials as tune-<16 hex>.so into the session's temp dir; nothing else may be deleted
        raise RequestError("bad_request", f"time_func: 'remove' deletes only an uploaded trial library "
                                          f"(tune-<16 hex>.so, not a link), got {lib_path!r}")
    want = req.get("sha256")
    if want is not None and (not isinstance(want, str) or _sha256_file(lib_path) != want):
        raise RequestError("load_failed", f"time_func: {lib_path} does not match the sha256 sent with the request "
                                          "(a corrupted upload)")
    try:
        import tvm.runtime as rt  # noqa: PLC0415 - lazy, runtime-only API

        dev = rt.cpu(0)
        lib = rt.load_module(lib_path)
    except Exception as exc:  # noqa: BLE001
        raise RequestError("load_failed", f"cannot load {lib_path}: {type(exc).__name__}: {exc}") from None
    finally:
        if req.get("remove") is True:  # a loaded library stays mapped; the file is not needed any more
            try:
                os.unlink(lib_path)
            except OSError:
                pass
    try:
        rng = np.random.default_rng(opts["seed"])
        tensors = []
        for dtype, shape in args:
            dt = np.dtype(dtype)
            if dt.kind == "f":
                host = rng.uniform(-1.0, 1.0, size=shape).astype(dt)
            elif dt.kind in "iu":
                host = rng.integers(0, 8, size=shape).astype(dt)
            else:
                host = np.zeros(shape, dtype=dt)
            tensors.append(rt.tensor(host, dev))
        evaluator = lib.time_evaluator(lib.entry_name, dev, number=opts["number"], repeat=opts["repeat"],
                                       min_repeat_ms=opts["min_repeat_ms"])
        costs = [float(c) for c in evaluator(*tensors).results]
    except Exception as exc:  # noqa: BLE001
        raise RequestError("run_failed", f"time_func failed: {type(exc).__name__}: {exc}") from None
    return {"costs_s": costs}


def _ok(rid, result: dict) -> dict:
    return {"v": PROTOCOL_VERSION, "id": rid, "ok": True, "result": result}


def _err(rid, kind: str, message: str) -> dict:
    return {"v": PROTOCOL_VERSION, "id": rid, "ok": False, "error": {"kind": kind, "message": message}}


def _encode(reply: dict) -> bytes:
    """One reply line. NaN/inf in an output head are written as NaN/Infinity (Python's json reads them);
    an ``id`` that cannot be written back (nested too deep) is replaced by null."""
    try:
        return json.dumps(reply, default=str).encode() + b"\n"
    except (ValueError, RecursionError, TypeError):
        safe = dict(reply, id=None)
        try:
            return json.dumps(safe, default=str).encode() + b"\n"
        except (ValueError, RecursionError, TypeError):
            return json.dumps(_err(None, "run_failed", "reply could not be encoded")).encode() + b"\n"


def main() -> int:
    """Serve requests from stdin until ``bye`` or EOF; returns the exit status (0)."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)  # stray writes to fd 1 (C libraries) go to stderr
    sys.stdout = sys.stderr
    out = os.fdopen(proto_fd, "wb", buffering=0)
    daemon = Daemon()
    log(f"protocol v{PROTOCOL_VERSION} ready")
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline(MAX_LINE_BYTES + 1)
        if not line:
            break
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line, in bounded pieces
                rest = stdin.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
            reply, keep = _err(None, "bad_request", f"request line over {MAX_LINE_BYTES} bytes"), True
        elif not line.strip():
            continue  # the controller's heartbeat
        else:
            try:
                reply, keep = daemon.handle(line)
            except BaseException as exc:  # noqa: BLE001 - last resort: answer, keep serving
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                reply, keep = _err(None, "run_failed", f"internal error: {type(exc).__name__}"), True
        data = _encode(reply)
        try:
            out.write(data)
        except BrokenPipeError:
            return 0
        if not keep:
            break
    log("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
