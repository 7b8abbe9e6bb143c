"""A MetaSchedule runner that times tuning candidates on farm boards (through the daemon).

Choice: **through the device daemon over SSH**, not TVM's RPC server + an SSH
tunnel. Why:

- the board needs nothing new: the daemon already runs there with the TVM
  *runtime* (``tvm.runtime.load_module`` + ``time_evaluator``), while TVM's
  RPC server needs ``tvm.rpc`` plus cloudpickle (and a tracker needs
  tornado) on every board;
- one transport to secure and supervise: the same pinned host key, lease,
  watchdog-guarded process group, hard time limit, checksummed upload and
  temp-dir clean-up as measurements (an RPC server would be a second
  long-lived listener on the board, and a tunnel a second channel to heal);
- the farm's failover and quarantine apply to tuning as they do to
  measurements, and boards tune in parallel (one candidate at a time each).

The cost: each candidate is linked into a ``.so`` here (the builder's tar of
object files, linked with ``g++`` or the cross ``aarch64-linux-gnu-g++``) —
while the previous candidate is timed on its board (two jobs per board) — and
uploaded over the session's one SFTP channel; the daemon checks its sha256 and
deletes it once loaded, so a trial costs one upload and one request round trip
(``benchmarks/board_tuning.py`` measures the overhead against LocalRunner).

Use::

    device = make_device("farm:rpi4", inventory="farm.toml")
    runner = make_board_runner(device, resolve_target("rpi4"))
    tune_module(mod, target, db_dir, TuningConfig(trials_per_task=8, runner=runner))
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["make_board_runner", "link_candidate"]


def link_candidate(tar_path: str, out_dir: Path, cc: str | None) -> Path:
    """Link MetaSchedule's exported tar of object files into ``out_dir/mod.so``.

    Args:
        tar_path: the builder's artifact (``tvm_tmp_mod.tar``).
        out_dir: where to unpack and link.
        cc: the C++ compiler driver for the target (None = the host's ``g++``).

    Raises:
        RuntimeError: the linker failed (its message).
    """
    from tvm.support import cc as tvm_cc

    with tarfile.open(tar_path) as tar:
        tar.extractall(out_dir, filter="data")
    objs = sorted(str(p) for p in out_dir.iterdir() if p.suffix in (".o", ".obj"))
    out = out_dir / "mod.so"
    tvm_cc.create_shared(str(out), objs, cc=cc or "g++")
    return out


def make_board_runner(device: Any, target: Any, *, number: int = 3, repeat: int = 1, min_repeat_ms: int = 50,
                      timeout_s: float = 60.0, max_parallel: int | None = None):
    """A ``tvm.s_tir.meta_schedule.runner.PyRunner`` timing candidates on ``device``'s boards.

    Args:
        device: an ``SshDevice`` (``ssh:BOARD``) or ``FarmDevice``
            (``farm:TAG``) — anything with ``time_function(lib, args, arch=,
            number=, repeat=, min_repeat_ms=, timeout_s=) -> Reply``.
        target: ``harness.compile.targets.TargetSpec`` of the candidates (its
            ``arch`` is checked against the board; ``cross_cc`` links them).
        number, repeat, min_repeat_ms: TVM ``time_evaluator`` settings.
        timeout_s: limit of one candidate's timing on the board.
        max_parallel: candidates timed at once (default: number of boards).

    Raises:
        ValueError: the device cannot time functions, or a CUDA target.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    if not callable(getattr(device, "time_function", None)):
        raise ValueError(f"device {getattr(device, 'name', device)!r} cannot run tuning candidates "
                         f"(use ssh:BOARD or farm:TAG)")
    if getattr(target, "device_kind", "cpu") != "cpu":
        raise ValueError("the board runner times CPU candidates only")
    workers = max_parallel or len(getattr(device, "boards", {})) or 1

    @derived_object
    class BoardRunnerFuture(PyRunnerFuture):
        def __init__(self, future: Future, work: Path) -> None:
            super().__init__()
            self.future = future
            self.work = work

        def done(self) -> bool:
            return self.future.done()

        def result(self) -> RunnerResult:
            try:
                reply = self.future.result()
            except Exception as exc:  # noqa: BLE001 - a failed candidate, not a failed tuning call
                return RunnerResult(None, f"BoardRunner: {type(exc).__name__}: {exc}")
            finally:
                shutil.rmtree(self.work, ignore_errors=True)
            if reply.ok:
                return RunnerResult([float(c) for c in reply.result["costs_s"]], None)
            return RunnerResult(None, f"BoardRunner {reply.error.kind.value}: {reply.error.message[:500]}")

    def link_and_time(artifact_path: str, work: Path, args: list):
        try:
            lib = link_candidate(artifact_path, work, target.cross_cc)
        except Exception as exc:  # noqa: BLE001 - a candidate that does not link is a failed candidate
            raise RuntimeError(f"link failed: {exc}") from None
        return device.time_function(lib, args, arch=target.arch, number=number, repeat=repeat,
                                    min_repeat_ms=min_repeat_ms, timeout_s=timeout_s)

    @derived_object
    class BoardRunner(PyRunner):
        def __init__(self) -> None:
            super().__init__()
            # twice the boards: a candidate links here while the previous one is timed on its board
            self.pool = ThreadPoolExecutor(max_workers=2 * workers, thread_name_prefix="board-runner")

        def run(self, runner_inputs):
            futures = []
            for inp in runner_inputs:
                work = Path(tempfile.mkdtemp(prefix="hilprune-cand-"))
                args = [[str(a[1]), [int(d) for d in a[2]]] for a in (x.as_json() for x in inp.args_info)]
                futures.append(BoardRunnerFuture(self.pool.submit(link_and_time, inp.artifact_path, work, args),
                                                 work))
            return futures

    return BoardRunner()
