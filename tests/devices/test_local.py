"""LocalDevice: measurements, daemon loss, timeouts killing the process group."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future

import numpy as np
import psutil
import pytest

from devices.base import MeasureConfig, MeasureError, MeasureErrorKind, MeasureResult
from devices.registry import make_device
from devices.local import LocalDevice

FAST = dict(warmup=2, number=5, repeat=5, min_repeat_ms=0, timeout_s=60)


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


@pytest.fixture()
def dev():
    d = LocalDevice()
    yield d
    d.close()


def test_measure_tvm_and_onnxruntime(dev, tiny_artifact, tiny_expected):
    res = dev.measure(tiny_artifact, MeasureConfig(**FAST))
    assert res.ok and res.error is None, res.error
    m = res.value
    assert m.device == "local" and m.backend == "tvm" and m.source == "measured"
    assert len(m.latency_ms) == 5 and len(m.warmup_ms) == 2 and m.number == 5
    assert m.stats.n == 5 and m.stats.min_ms <= m.stats.p50_ms <= m.stats.p90_ms <= m.stats.max_ms
    assert m.stats.p50_ms == pytest.approx(float(np.median(m.latency_ms)))
    assert m.artifact_sha256 == __import__("json").loads(
        (tiny_artifact / "manifest.json").read_text())["library_sha256"]
    assert m.tuning["tuned"] is False
    assert m.hello["protocol"] == 1 and m.hello["pid"] == dev.pid
    assert m.output_shape == (1, 10)
    np.testing.assert_allclose(m.output_head, tiny_expected.reshape(-1), rtol=1e-5, atol=1e-5)
    assert 0 <= m.remeasured <= 2 and m.created_at > 1.7e9
    pid = dev.pid
    fut = dev.submit(tiny_artifact, MeasureConfig(backend="onnxruntime", **FAST))
    assert isinstance(fut, Future)
    o = fut.result(timeout=60)
    assert o.ok, o.error
    assert o.value.backend == "onnxruntime" and dev.pid == pid  # same daemon session reused
    np.testing.assert_allclose(o.value.output_head, m.output_head, rtol=1e-5, atol=1e-5)


def test_unstable_remeasures_then_flags(dev, tiny_artifact):
    # an impossibly tight CoV threshold: every result is "unstable"
    res = dev.measure(tiny_artifact, MeasureConfig(max_cov=1e-12, max_remeasure=2, **FAST))
    assert res.ok
    assert res.value.remeasured == 2 and res.value.stats.unstable is True


def test_missing_manifest_is_a_value(dev, tmp_path):
    res = dev.measure(tmp_path, MeasureConfig(**FAST))
    assert res.value is None and res.error.kind is MeasureErrorKind.LOAD_FAILED


def test_daemon_killed_then_fresh_measure(dev, tiny_artifact):
    cfg = MeasureConfig(**FAST)
    assert dev.measure(tiny_artifact, cfg).ok
    old = dev.pid
    os.kill(old, signal.SIGKILL)
    time.sleep(0.2)
    lost = dev.measure(tiny_artifact, cfg)
    assert lost.error is not None and lost.error.kind is MeasureErrorKind.DEVICE_LOST
    again = dev.measure(tiny_artifact, cfg)
    assert again.ok, again.error
    assert dev.pid != old and again.value.hello["pid"] == dev.pid
    # killed while a request is in flight -> device_lost too
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", dev.call("sleep", timeout_s=30, s=20)))
    t.start()
    time.sleep(1.0)
    os.kill(dev.pid, signal.SIGKILL)
    t.join(timeout=20)
    assert box["r"].error.kind is MeasureErrorKind.DEVICE_LOST


def test_timeout_kills_process_group(dev):
    dev.hello()
    pgid = dev.pid
    assert os.getpgid(pgid) == pgid != os.getpgid(0)  # its own process group
    box = {}
    # 5 s limit: room for the request to reach the daemon and its child to start on a loaded machine
    t = threading.Thread(target=lambda: box.setdefault(
        "r", dev.call("sleep", timeout_s=5.0, s=60, child=True)))
    t.start()
    deadline = time.monotonic() + 4.5
    while len(_group_alive(pgid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_group_alive(pgid)) >= 2  # the daemon and its sleeping child
    t.join(timeout=30)
    assert box["r"].error.kind is MeasureErrorKind.TIMEOUT
    assert dev.pid is None
    deadline = time.monotonic() + 30  # generous: the loop ends as soon as the group is gone
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group_alive(pgid) == []  # child included
    assert dev.hello()["pid"] == dev.pid != pgid  # and the device comes back


def test_make_device_and_config_errors():
    d = make_device("local")
    try:
        assert isinstance(d, LocalDevice) and d.name == "local"
    finally:
        d.close()
    with pytest.raises(ValueError, match=r"valid names are 'local'.*'ssh:BOARD', 'farm:TAG'"):
        make_device("cloud")
    with pytest.raises(ValueError, match="need an inventory"):
        make_device("ssh:pi4")
    with pytest.raises(ValueError, match="MeasureConfig.repeat"):
        MeasureConfig(repeat=0)
    with pytest.raises(ValueError, match="MeasureConfig.backend"):
        MeasureConfig(backend="torch")
    with pytest.raises(ValueError, match="MeasureConfig.num_threads"):
        MeasureConfig(num_threads=0)
    with pytest.raises(ValueError, match="exactly one"):
        MeasureResult()
    r = MeasureResult.fail("timeout", "slow")
    assert r.error == MeasureError(MeasureErrorKind.TIMEOUT, "slow") and not r.ok


def test_close_drains_queue_then_refuses(tiny_artifact):
    from devices.base import DeviceUnavailable

    d = LocalDevice()
    futs = [d.submit(tiny_artifact, MeasureConfig(**FAST)) for _ in range(2)]
    d.close()
    assert all(f.done() and f.result().ok for f in futs)
    assert futs[0].result().value.hello["pid"] == futs[1].result().value.hello["pid"]
    assert d.pid is None
    with pytest.raises(RuntimeError, match="closed"):
        d.submit(tiny_artifact, MeasureConfig(**FAST))
    with pytest.raises(DeviceUnavailable):
        d.hello()
    assert d.measure(tiny_artifact, MeasureConfig(**FAST)).error.kind is MeasureErrorKind.DEVICE_LOST
