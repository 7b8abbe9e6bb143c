"""Tests of harness/compile/targets.py: presets, JSON targets, DESIGN.md §4 pitfalls."""

import json
import os

import pytest
import tvm

from harness.compile.targets import PRESETS, resolve_target


def test_host_preset_names_the_real_cpu():
    spec = resolve_target("host")
    mcpu = str(tvm.target.codegen.llvm_get_system_cpu())
    assert spec.target["mcpu"] == mcpu
    assert mcpu not in ("", "generic")  # generic x86 would emit SSE2-only code
    assert spec.target["kind"] == "llvm"
    assert spec.target["mtriple"].startswith("x86_64")
    assert spec.target["num-cores"] == os.cpu_count()
    assert (spec.arch, spec.device_kind, spec.cross_cc) == ("x86_64", "cpu", None)


def test_rpi_presets_are_aarch64_with_cross_linker():
    rpi4 = resolve_target("rpi4")
    assert rpi4.target == {
        "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
        "mattr": ["+neon"], "num-cores": 4,
    }
    assert (rpi4.arch, rpi4.device_kind, rpi4.cross_cc) == ("aarch64", "cpu", "aarch64-linux-gnu-g++")
    assert resolve_target("rpi5").target["mcpu"] == "cortex-a76"


def test_jetson_presets_are_cuda_with_aarch64_host():
    orin = resolve_target("jetson-orin-nano")
    assert orin.target["kind"] == "cuda" and orin.target["arch"] == "sm_87"
    assert orin.target["host"]["mcpu"] == "cortex-a78ae"  # not the tag's carmel
    assert orin.target["host"]["mtriple"] == "aarch64-linux-gnu"
    assert (orin.arch, orin.device_kind) == ("aarch64", "cuda")
    assert resolve_target("jetson-nano").target["arch"] == "sm_53"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tvm_accepts_every_preset(name):
    target = resolve_target(name).tvm_target()
    assert target.kind.name == resolve_target(name).target["kind"]


def test_json_target_string():
    text = json.dumps({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55",
                       "mattr": ["+neon"], "num-cores": 8})
    spec = resolve_target(text)
    assert spec.name == "custom" and spec.arch == "aarch64"
    assert spec.cross_cc == "aarch64-linux-gnu-g++"
    assert spec.target["mcpu"] == "cortex-a55"


@pytest.mark.parametrize(
    "target, fragment",
    [
        ({"kind": "llvm", "mcpu": "cortex-a72"}, "mtriple"),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": "+neon"}, "list"),
        ({"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": "native"}, "native"),
        ({"kind": "opencl"}, "kind"),
    ],
)
def test_json_target_pitfalls_are_refused(target, fragment):
    with pytest.raises(ValueError, match=fragment):
        resolve_target(json.dumps(target))


def test_unknown_target_lists_presets_in_one_line():
    with pytest.raises(ValueError) as info:
        resolve_target("rpi3")
    message = str(info.value)
    assert "\n" not in message
    for name in PRESETS:
        assert name in message


def test_canonical_json_is_key_order_independent():
    a = resolve_target('{"kind":"llvm","mtriple":"aarch64-linux-gnu","mcpu":"cortex-a72"}')
    b = resolve_target('{"mcpu":"cortex-a72","mtriple":"aarch64-linux-gnu","kind":"llvm"}')
    assert a.canonical_json() == b.canonical_json()
