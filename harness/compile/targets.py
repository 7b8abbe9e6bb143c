"""TVM target presets for the boards hilprune compiles for.

A target is a TVM JSON target dict (TVM 0.27 refuses CLI strings such as
``"llvm -mcpu=x"``, DESIGN.md §4). Pitfalls handled here (DESIGN.md §4):

- a target without ``mcpu`` emits SSE2-only x86 code, and ``"mcpu": "native"``
  is refused, so the ``host`` preset asks LLVM for the real CPU name;
- ``mcpu`` without ``mtriple`` silently builds x86, so every aarch64 preset
  names its triple;
- ``mattr`` must be a list;
- aarch64 objects must be linked with ``aarch64-linux-gnu-g++`` (the host gcc
  fails with "Relocations in generic ELF (EM: 183)");
- the ``nvidia/jetson-orin-nano`` tag names the wrong CPU (carmel); Orin's CPU
  is Cortex-A78AE.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

Arch = Literal["x86_64", "aarch64"]
DeviceKind = Literal["cpu", "cuda"]

#: Cross linker for aarch64 artifacts (Debian package g++-aarch64-linux-gnu).
AARCH64_CXX = "aarch64-linux-gnu-g++"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A compile target.

    Attributes:
        name: preset name (``"host"``, ``"rpi4"``, ...) or ``"custom"`` for a
            target given as a JSON dict.
        target: TVM JSON target dict, e.g. ``{"kind": "llvm", "mtriple":
            "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"],
            "num-cores": 4}``. For CUDA the dict holds the ``"host"`` sub-target.
        arch: CPU architecture the library is linked for.
        device_kind: where the model's kernels run.
        cross_cc: compiler passed as ``cc=`` to ``export_library``, or None to
            link with the host toolchain.
    """

    name: str
    target: dict[str, Any]
    arch: Arch
    device_kind: DeviceKind
    cross_cc: str | None

    def canonical_json(self) -> str:
        """Target dict as canonical JSON (sorted keys, no spaces): part of cache keys."""
        return json.dumps(self.target, sort_keys=True, separators=(",", ":"))

    def tvm_target(self):  # -> tvm.target.Target (tvm imported lazily)
        """Build the ``tvm.target.Target``; raises ``ValueError`` if TVM refuses the dict."""
        import tvm

        try:
            return tvm.target.Target(self.target)
        except Exception as exc:  # TVM raises its own error types
            raise ValueError(f"TVM refuses target {self.canonical_json()}: {exc}") from exc


def _host_triple() -> str:
    machine = platform.machine()
    if machine in ("x86_64", "AMD64"):
        return "x86_64-pc-linux-gnu"
    if machine in ("aarch64", "arm64"):
        return "aarch64-linux-gnu"
    raise ValueError(f"unsupported host machine {machine!r}: hilprune builds for x86_64 or aarch64")


def _host() -> TargetSpec:
    import tvm

    triple = _host_triple()
    mcpu = str(tvm.target.codegen.llvm_get_system_cpu())
    if mcpu in ("", "generic"):
        logger.warning("LLVM reports host CPU %r: code will use only baseline ISA", mcpu)
    arch: Arch = "x86_64" if triple.startswith("x86_64") else "aarch64"
    target = {"kind": "llvm", "mtriple": triple, "mcpu": mcpu, "num-cores": os.cpu_count() or 1}
    return TargetSpec("host", target, arch, "cpu", None)


def _arm_llvm(mcpu: str, cores: int) -> dict[str, Any]:
    return {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": mcpu,
        "mattr": ["+neon"],
        "num-cores": cores,
    }


def _arm(name: str, mcpu: str, cores: int) -> Callable[[], TargetSpec]:
    return lambda: TargetSpec(name, _arm_llvm(mcpu, cores), "aarch64", "cpu", AARCH64_CXX)


def _jetson(name: str, sm: str, host_mcpu: str, cores: int) -> Callable[[], TargetSpec]:
    target = {"kind": "cuda", "arch": sm, "host": _arm_llvm(host_mcpu, cores)}
    return lambda: TargetSpec(name, target, "aarch64", "cuda", AARCH64_CXX)


#: Preset name -> factory. Cores and CPUs: Pi 4 = 4x Cortex-A72, Pi 5 = 4x
#: Cortex-A76, Jetson Nano = 4x Cortex-A57 + Maxwell sm_53, Jetson Orin Nano =
#: 6x Cortex-A78AE + Ampere sm_87 (vendor data sheets; DESIGN.md §4 CUDA).
PRESETS: dict[str, Callable[[], TargetSpec]] = {
    "host": _host,
    "rpi4": _arm("rpi4", "cortex-a72", 4),
    "rpi5": _arm("rpi5", "cortex-a76", 4),
    "jetson-nano": _jetson("jetson-nano", "sm_53", "cortex-a57", 4),
    "jetson-orin-nano": _jetson("jetson-orin-nano", "sm_87", "cortex-a78ae", 6),
}


def _from_dict(target: dict[str, Any]) -> TargetSpec:
    kind = target.get("kind")
    if kind not in ("llvm", "cuda"):
        raise ValueError(f"target kind must be 'llvm' or 'cuda', got {kind!r}")
    cpu = target if kind == "llvm" else target.get("host")
    if not isinstance(cpu, dict):
        raise ValueError("a cuda target needs a 'host' llvm sub-target dict (with mtriple)")
    if "mattr" in cpu and not isinstance(cpu["mattr"], list):
        raise ValueError("'mattr' must be a list of strings (DESIGN.md §4)")
    if cpu.get("mcpu") == "native":
        raise ValueError("'mcpu': 'native' is refused by TVM 0.27; use the host preset")
    triple = cpu.get("mtriple")
    if triple is None:
        raise ValueError("target needs 'mtriple': mcpu without mtriple silently builds x86")
    if not isinstance(triple, str):
        raise ValueError(f"target 'mtriple' must be a string such as 'aarch64-linux-gnu', got {triple!r}")
    mcpu = cpu.get("mcpu")
    if mcpu is not None:
        if not isinstance(mcpu, str):
            raise ValueError(f"target 'mcpu' must be a string such as 'cortex-a72', got {mcpu!r}")
        unknown = _unknown_cpu(mcpu, triple)
        if unknown:
            raise ValueError(unknown)
    if triple.startswith("aarch64"):
        arch: Arch = "aarch64"
    elif triple.startswith("x86_64"):
        arch = "x86_64"
    else:
        raise ValueError(f"unsupported mtriple {triple!r}: expected x86_64-* or aarch64-*")
    cross_cc = AARCH64_CXX if arch != host_arch() else None
    return TargetSpec("custom", target, arch, "cuda" if kind == "cuda" else "cpu", cross_cc)


def _unknown_cpu(mcpu: str, triple: str) -> str | None:
    """Why LLVM does not know ``mcpu`` for ``triple`` (it would silently build generic code and the
    artifact would record the bogus name), or None when it knows it or TVM is not importable here."""
    try:
        from tvm.target import codegen  # noqa: PLC0415 - lazy: TVM is heavy
    except Exception:  # noqa: BLE001 - no TVM: the build will say what it says
        return None
    try:
        if codegen.llvm_is_valid_cpu(mcpu, triple):
            return None
    except Exception:  # noqa: BLE001 - an LLVM without this triple: refuse it below with the list
        pass
    return (f"target 'mcpu': {mcpu!r} is not a CPU LLVM knows for mtriple {triple!r} (it would build generic "
            f"code); e.g. cortex-a72 (Pi 4), cortex-a76 (Pi 5), cortex-a78ae (Orin), skylake, znver3")


def host_arch() -> Arch:
    """This machine's CPU architecture, ``"x86_64"`` or ``"aarch64"`` (ValueError for any other)."""
    return "x86_64" if _host_triple().startswith("x86_64") else "aarch64"


def host_cannot_run(target: "TargetSpec") -> str | None:
    """Why this machine's CPU cannot run ``target``'s code (another arch, or a GPU target); None if it can.

    The one rule behind ``--device local`` refusals (bench, nightly suites) and
    the host-only MetaSchedule runner.
    """
    host = host_arch()
    if target.device_kind != "cpu" or target.arch != host:
        return f"target {target.name!r} builds {target.arch}/{target.device_kind} code; this machine's CPU is {host}"
    return None


#: ARM "CPU part" (implementer 0x41) -> LLVM mcpu (Arm's Technical Reference Manuals, MIDR_EL1.PartNum).
ARM_CPU_PARTS = {
    "0xd03": "cortex-a53", "0xd04": "cortex-a35", "0xd05": "cortex-a55", "0xd07": "cortex-a57",
    "0xd08": "cortex-a72", "0xd09": "cortex-a73", "0xd0a": "cortex-a75", "0xd0b": "cortex-a76",
    "0xd0c": "neoverse-n1", "0xd0d": "cortex-a77", "0xd40": "neoverse-v1", "0xd41": "cortex-a78",
    "0xd42": "cortex-a78ae", "0xd44": "cortex-x1", "0xd46": "cortex-a510", "0xd47": "cortex-a710",
    "0xd49": "neoverse-n2",
}
#: x86-64 psABI micro-architecture levels, highest first: (LLVM cpu name, /proc/cpuinfo flags it needs).
X86_LEVELS = (
    ("x86-64-v4", ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "bmi2")),
    ("x86-64-v3", ("avx2", "fma", "bmi2", "avx")),
    ("x86-64-v2", ("sse4_2", "popcnt")),
)


def board_target(hello: dict[str, Any], board: str = "board") -> TargetSpec:
    """The ``host`` target of a board: its own CPU, from its daemon's hello, never the controller's.

    A board must not run code tuned for the controller's ``mcpu`` (illegal
    instructions, then a quarantine that blames the board). From the hello's
    ``machine`` and ``/proc/cpuinfo`` facts (``devices/daemon.py`` ``cpu_facts``):

    - aarch64: ``mcpu`` from the ARM "CPU part" (:data:`ARM_CPU_PARTS`),
      ``generic`` + NEON when unknown (an emulated board reports the host's
      cpuinfo, hence generic);
    - x86_64: the highest x86-64 psABI level whose flags the board has
      (:data:`X86_LEVELS`: ``x86-64-v4``/``v3``/``v2``, else ``x86-64``) —
      an ISA level, not a model name, so every board with those flags runs it.

    Args:
        hello: a daemon hello (``machine``, ``cpu_count``, ``cpu_part``, ``cpu_flags``).
        board: the board's name, for messages and the preset name ``host@BOARD``.

    Raises:
        ValueError: a machine hilprune does not build for.
    """
    machine = str(hello.get("machine") or "")
    cores = int(hello.get("cpu_count") or 1)
    if machine in ("aarch64", "arm64"):
        mcpu = ARM_CPU_PARTS.get(str(hello.get("cpu_part") or "").lower(), "generic")
        target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": ["+neon"],
                  "num-cores": cores}
        arch: Arch = "aarch64"
    elif machine in ("x86_64", "AMD64"):
        flags = set(hello.get("cpu_flags") or ())
        mcpu = next((name for name, need in X86_LEVELS if flags.issuperset(need)), "x86-64")
        target = {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": mcpu, "num-cores": cores}
        arch = "x86_64"
    else:
        raise ValueError(f"board {board!r} reports machine {machine!r}; hilprune builds for x86_64 or aarch64")
    cross_cc = AARCH64_CXX if arch != host_arch() else None
    return TargetSpec(f"host@{board}", target, arch, "cpu", cross_cc)


def resolve_target(name_or_json: str) -> TargetSpec:
    """Resolve a preset name or a JSON target dict string to a ``TargetSpec``.

    Args:
        name_or_json: one of ``PRESETS`` (``host``, ``rpi4``, ``rpi5``,
            ``jetson-nano``, ``jetson-orin-nano``) or a JSON object string such
            as ``'{"kind":"llvm","mtriple":"aarch64-linux-gnu","mcpu":"cortex-a72"}'``.

    Raises:
        ValueError: unknown preset (the message lists the presets), malformed
            JSON, or a target dict that breaks a DESIGN.md §4 rule.
    """
    text = name_or_json.strip()
    if text.startswith("{"):
        try:
            target = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"target JSON is malformed: {exc}") from exc
        if not isinstance(target, dict):
            raise ValueError("target JSON must be an object")
        return _from_dict(target)
    factory = PRESETS.get(text)
    if factory is None:
        raise ValueError(
            f"unknown target {text!r}; presets: {', '.join(PRESETS)} (or a JSON target dict)"
        )
    return factory()
