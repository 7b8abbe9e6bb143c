"""The grid warm-up: every tuning task any architecture of the search can produce, without enumerating them.

DESIGN.md §4 and §5 ("The board's own latency table"): MetaSchedule keys tuned
schedules by workload (the fused TIR function), so with widths on a grid
(round-to 8) the workloads a search can meet form a finite set. Tuned once per
target, that set covers every candidate, and no candidate tunes afterwards.

How the set is found without enumerating architectures (a ResNet-20 with
stage widths on grid 8 has 2·4·5·2³·4³·5³ ≈ 10⁷ of them):

1. **Widths per group.** The search's actions move one group at a time along a
   chain (:func:`harness.search.env.reachable_widths`: ``step_fraction``,
   ``round_to``, ``min_channels``, the env's own rule), so a group's widths are
   that chain (``widths="search"``, the default). ``widths="grid"`` takes every
   multiple of ``round_to`` up to the group's width (``harness.pruning.round_spec``'s
   grid: what ``random_spec(..., round_to=)`` and round-to-nearest can give).
2. **Which groups set each layer's shape.** For every group the model is rebuilt
   (:func:`harness.pruning.rebuild`) with that group one channel narrower, and
   every Conv2d / Linear whose input or output width changed depends on it. A
   layer's workload is a function of those groups' widths only (its kernel,
   stride, feature-map size and fused epilogue do not depend on widths).
3. **A covering set of architectures.** For every set of groups that jointly
   set some layer's shape (a conv's (C_in group, C_out group); a residual
   stream's bias reshapes and pooling: one group), every combination of their
   widths must appear in at least one architecture. A greedy covering-array
   construction (AETG, Cohen et al., IEEE TSE 1997: each new row covers as
   many uncovered combinations as it can) needs about max |W_a|·|W_b| rows:
   for ResNet-20 with every group on grid 8, 26 with the search's widths (the
   bound is 5·5 = 25) and 64 with every multiple of 8 (the bound, 8·8),
   instead of ~10⁷ architectures.
4. **Task extraction.** Each covering architecture is rebuilt, exported to
   ONNX and lowered exactly as a candidate is (:func:`harness.compile.build.lower_onnx`),
   and MetaSchedule extracts its tasks; the union, deduplicated by
   MetaSchedule's own structural workload equality (a ``MemoryDatabase`` with
   ``module_equality="structural"``, as the ``JSONDatabase`` keys them), is
   the grid's task set.

Counted here (ResNet-20, 1x1x28x28, target ``host``, grid 8; conv tasks / all
tasks, the rest being pooling, classifier and bias/flatten reshapes):

    groups pruned    every multiple of 8     the search's widths (step 25 %)
    inner convs      43 / 55                 34 / 44
    all (+ stages)   250 / 290               148 / 174

43 and 250 are DESIGN.md §4's conv-workload counts: a conv's fused task is the
same wherever the layer's shapes and epilogue are (the three conv2 of a stage
share one). The search's widths are fewer because its actions step by 25 % of
the unpruned width (64 -> 48 -> 32 -> 16 -> 8: 56, 40 and 24 never occur).
tests/harness/test_grid.py checks these against random architectures the env
proposes and a brute-force enumeration of a small grid.

The set is cached per (model, input shape, classes, build options, target, grid
spec, TVM version) at ``cache_dir/grids/<key>.json`` (TIR of every task,
``tvm.ir.save_json``), so a second warm-up call with nothing new does no
extraction and no MetaSchedule call.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.compile.targets import TargetSpec

__all__ = ["GRID_WIDTHS", "GridSpec", "GridTasks", "LayerDeps", "TaskSet", "architecture_tasks",
           "covering_specs", "grid_tasks", "group_widths", "layer_dependencies"]

log = logging.getLogger(__name__)

#: How a group's widths are chosen (see the module docstring).
GRID_WIDTHS = ("search", "grid")
#: Version of the cached task list's format and of the enumeration rule.
GRID_CACHE_VERSION = 1


@dataclass(frozen=True, slots=True)
class GridSpec:
    """Which widths the warm-up covers. Immutable; checked once.

    Attributes:
        round_to: the grid: widths are multiples of this (channels; 1 = any width).
        widths: ``"search"`` (the widths the search's actions reach: the env's chain from the
            unpruned width, :func:`harness.search.env.reachable_widths`) or ``"grid"`` (every
            multiple of ``round_to`` up to the group's width, plus the width itself).
        step_fraction: share of a group's filters one action removes (``"search"`` only; the
            search's ``--step-fraction``, default 0.25 as ``SearchConfig``).
        min_channels: no group below this many channels (the env's ``min_channels``).
        groups: indices (``find_groups`` order) of the groups that are pruned; None = all of
            them (what the search prunes). The others stay at their unpruned width.
    """

    round_to: int = 8
    widths: str = "search"
    step_fraction: float = 0.25
    min_channels: int = 1
    groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to={self.round_to!r} must be an integer >= 1 (e.g. 8; 1 = no grid)")
        if self.widths not in GRID_WIDTHS:
            raise ValueError(f"widths={self.widths!r} must be one of {', '.join(GRID_WIDTHS)}")
        if not 0 < self.step_fraction < 1:
            raise ValueError(f"step_fraction={self.step_fraction} must be in (0, 1), e.g. 0.25")
        if self.min_channels < 1:
            raise ValueError(f"min_channels={self.min_channels} must be >= 1")
        if self.groups is not None:
            object.__setattr__(self, "groups", tuple(sorted({int(g) for g in self.groups})))


@dataclass(frozen=True, slots=True)
class LayerDeps:
    """Which groups set one weight layer's channel counts.

    Attributes:
        layer: the module name (a Conv2d or Linear).
        in_groups: groups whose width changes the layer's input channels (in_features).
        out_groups: groups whose width changes its output channels (out_features).
    """

    layer: str
    in_groups: tuple[int, ...]
    out_groups: tuple[int, ...]


class TaskSet:
    """A set of MetaSchedule tasks, equal when their workloads are structurally equal.

    Uses MetaSchedule's own workload equality (a ``MemoryDatabase`` with
    ``module_equality="structural"``: the ``JSONDatabase`` of the tuning cache keys
    workloads the same way), so "in the set" means "one tuning record serves both".
    """

    def __init__(self) -> None:
        from tvm.s_tir import meta_schedule as ms

        self._db = ms.database.MemoryDatabase(module_equality="structural")
        self.tasks: list[Any] = []

    def add(self, task) -> bool:
        """Add ``task`` (an ``ExtractedTask``) unless an equal workload is in; True when it was new."""
        mod = task.dispatched[0]
        if self._db.has_workload(mod):
            return False
        self._db.commit_workload(mod)
        self.tasks.append(task)
        return True

    def __contains__(self, task) -> bool:
        return bool(self._db.has_workload(task.dispatched[0]))

    def __len__(self) -> int:
        return len(self.tasks)


@dataclass(frozen=True, slots=True)
class GridTasks:
    """The tuning tasks of a grid (:func:`grid_tasks`).

    Attributes:
        tasks: the distinct tasks (``ExtractedTask``; weight = occurrences in the first
            covering architecture that had it).
        group_widths: per group (``find_groups`` order), the widths covered, widest first.
        layer_combinations: Σ over weight layers of the width combinations of the groups that
            set the layer (a conv's distinct (C_in, C_out) pairs): layers, not yet deduplicated.
        architectures: covering architectures extracted (0 on a cache hit: they were extracted before).
        conv_tasks: tasks whose fused function contains a conv2d.
        cache_hit: the task list came from ``cache_dir/grids/``.
        enumerate_s: wall seconds of this call, s.
        cache_path: the cache file.
    """

    tasks: tuple[Any, ...]
    group_widths: tuple[tuple[int, ...], ...]
    layer_combinations: int
    architectures: int
    conv_tasks: int
    cache_hit: bool
    enumerate_s: float
    cache_path: Path | None = field(default=None)

    @property
    def total(self) -> int:
        """Number of distinct tasks."""
        return len(self.tasks)


def group_widths(channels: Sequence[int], spec: GridSpec) -> list[tuple[int, ...]]:
    """The widths each group takes on the grid, widest first (a group not in ``spec.groups``: its width only).

    Args:
        channels: each group's unpruned width (channels), ``find_groups`` order.
        spec: the grid.
    """
    from harness.pruning import _grid
    from harness.search.env import EnvConfig, reachable_widths

    env = EnvConfig(step_fraction=spec.step_fraction, min_channels=spec.min_channels, round_to=spec.round_to)
    out = []
    for i, c in enumerate(channels):
        if spec.groups is not None and i not in spec.groups:
            out.append((int(c),))
        elif spec.widths == "search":
            out.append(reachable_widths(int(c), env))
        else:  # every grid point, at least min_channels
            points = [w for w in _grid(int(c), spec.round_to) if w >= spec.min_channels] or [int(c)]
            out.append(tuple(sorted(set(points), reverse=True)))
    return out


def _layer_shapes(model) -> dict[str, tuple[int, int]]:
    from torch import nn

    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            shapes[name] = (m.in_features, m.out_features)
    return shapes


def layer_dependencies(model_name: str, input_shape: Sequence[int], num_classes: int = 10,
                       build_kwargs: dict | None = None) -> tuple[list, list[LayerDeps]]:
    """The model's prunable groups and, for every Conv2d and Linear, the groups that set its widths.

    Found by rebuilding the model with one group narrower at a time (1 channel less) and
    comparing every layer's (in, out) channels with the unpruned model's: nothing is
    assumed about the architecture's wiring.

    Args:
        model_name: a zoo model (``harness.models.MODELS``).
        input_shape: (N, C, H, W) or (C, H, W).
        num_classes: classifier outputs.
        build_kwargs: more builder options (e.g. ``config=`` for a CIFAR ResNet of other widths).

    Returns:
        (groups as ``harness.pruning.find_groups`` gives them, one :class:`LayerDeps` per layer in
        module order).

    Raises:
        ValueError: unknown model, or one without ``width_key`` (it cannot be rebuilt from a spec).
    """
    from harness.models import build_model
    from harness.pruning import ArchSpec, find_groups, full_spec, rebuild

    shape = tuple(input_shape)[-3:]
    kw = dict(build_kwargs or {})
    full = build_model(model_name, num_classes=num_classes, in_channels=shape[0], input_size=shape[1:], **kw)
    groups = find_groups(full, shape)
    base = _layer_shapes(full)
    ins: dict[str, set[int]] = {n: set() for n in base}
    outs: dict[str, set[int]] = {n: set() for n in base}
    spec0 = full_spec(groups).channels
    for g in groups:
        if g.channels < 2:
            continue
        probe = list(spec0)
        probe[g.index] = g.channels - 1
        shapes = _layer_shapes(rebuild(model_name, ArchSpec(tuple(probe)), num_classes=num_classes,
                                       in_channels=shape[0], input_shape=shape, **kw))
        for name, (cin, cout) in base.items():
            new_in, new_out = shapes[name]
            if new_in != cin:
                ins[name].add(g.index)
            if new_out != cout:
                outs[name].add(g.index)
    deps = [LayerDeps(n, tuple(sorted(ins[n])), tuple(sorted(outs[n]))) for n in base]
    return groups, deps


def covering_specs(widths: Sequence[Sequence[int]], requirements: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Architectures (one width per group) in which every combination of widths of every
    requirement's groups occurs at least once: a covering array (greedy, AETG-style).

    The first architecture is the unpruned one (every group at ``widths[g][0]``). Each next
    one fixes the groups requirement by requirement (most uncovered combinations first) to the
    uncovered combination, consistent with what is fixed, that completes the most uncovered
    combinations of all requirements (first in sorted order on ties); groups left free stay at
    their first width.

    Args:
        widths: per group, its widths (first = unpruned).
        requirements: tuples of group indices whose widths must be covered jointly.

    Returns:
        The architectures, as tuples of widths in group order. Deterministic.
    """
    reqs: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
    for r in requirements:
        key = tuple(sorted({int(g) for g in r if len(widths[g]) > 1}))
        if key and key not in reqs:
            reqs[key] = set(itertools.product(*(widths[g] for g in key)))
    first = tuple(w[0] for w in widths)
    rows = [first]

    def cover(row: tuple[int, ...]) -> None:
        for key, left in reqs.items():
            left.discard(tuple(row[g] for g in key))

    cover(first)
    while any(reqs.values()):
        fixed: dict[int, int] = {}
        order = sorted(reqs, key=lambda k: (-len(reqs[k]), k))
        for key in order:
            options = sorted(c for c in reqs[key] if all(fixed.get(g, v) == v for g, v in zip(key, c)))
            if options:  # AETG's choice: the option that completes most uncovered combinations elsewhere
                fixed.update(zip(key, max(options, key=lambda c: _gain(reqs, {**fixed, **dict(zip(key, c))}))))
        row = tuple(fixed.get(g, widths[g][0]) for g in range(len(widths)))
        cover(row)
        rows.append(row)
    return rows


def _gain(reqs: dict[tuple[int, ...], set[tuple[int, ...]]], fixed: dict[int, int]) -> int:
    """Uncovered combinations that the (partial) assignment ``fixed`` covers completely."""
    return sum(1 for key, left in reqs.items()
               if all(g in fixed for g in key) and tuple(fixed[g] for g in key) in left)


def architecture_tasks(model_name: str, channels: Sequence[int], input_shape: Sequence[int], target: TargetSpec,
                       work_dir: Path, num_classes: int = 10, build_kwargs: dict | None = None) -> list:
    """The MetaSchedule tasks of one architecture, exactly as its candidate build will meet them.

    Rebuilds ``model_name`` at ``channels`` (kept channels per group), exports it to ONNX
    (:func:`harness.compile.export.export_onnx`, opset 17, checked against ONNX Runtime), lowers it
    (:func:`harness.compile.build.lower_onnx`) and extracts its tasks
    (``meta_schedule.relax_integration.extract_tasks``).

    Args:
        model_name, input_shape (N, C, H, W), num_classes, build_kwargs: as :func:`layer_dependencies`.
        channels: kept channels per group.
        target: the resolved target.
        work_dir: where the ONNX file is written (overwritten).

    Raises:
        ValueError: bad spec. harness.compile.build.CompileFailed: the export's lowering failed.
    """
    import torch
    from tvm.s_tir import meta_schedule as ms

    from harness.compile.build import lower_onnx
    from harness.compile.export import export_onnx
    from harness.compile.tuning import _import_cpu_tensor_intrin
    from harness.pruning import ArchSpec, rebuild

    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    model = rebuild(model_name, ArchSpec(tuple(channels)), num_classes=num_classes, in_channels=shape[1],
                    input_shape=shape[1:], **(build_kwargs or {})).eval()
    path = Path(work_dir) / "arch.onnx"
    with torch.no_grad():
        export_onnx(model, shape, path)
    lowered = lower_onnx(path.read_bytes(), target)
    tvm_target = target.tvm_target()
    if tvm_target.kind.name == "llvm":
        _import_cpu_tensor_intrin()
    return list(ms.relax_integration.extract_tasks(lowered.mod, tvm_target))


def _cache_key(model_name: str, shape: tuple[int, ...], num_classes: int, build_kwargs: dict | None,
               target: TargetSpec, spec: GridSpec) -> str:
    import tvm

    parts = [GRID_CACHE_VERSION, model_name, list(shape), num_classes, repr(sorted((build_kwargs or {}).items())),
             target.canonical_json(), asdict(spec), tvm.__version__]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _save(path: Path, tasks: Sequence[Any], meta: dict) -> None:
    import tvm

    entries = [{"name": t.task_name, "weight": int(t.weight), "mod": tvm.ir.save_json(t.mod),
                "dispatched": tvm.ir.save_json(t.dispatched[0])} for t in tasks]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump({"version": GRID_CACHE_VERSION, **meta, "tasks": entries}, fh)
    os.replace(tmp, path)


def _load(path: Path, target: TargetSpec) -> tuple[list, dict] | None:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != GRID_CACHE_VERSION:
        return None
    tvm_target = target.tvm_target()
    tasks = [ms.ExtractedTask(e["name"], tvm.ir.load_json(e["mod"]), tvm_target,
                              [tvm.ir.load_json(e["dispatched"])], int(e["weight"])) for e in data["tasks"]]
    return tasks, data


def grid_tasks(model_name: str, input_shape: Sequence[int], target: TargetSpec, spec: GridSpec = GridSpec(), *,
               num_classes: int = 10, build_kwargs: dict | None = None, cache_dir: Path | None = None,
               progress: Callable[[int, int], None] | None = None) -> GridTasks:
    """Every distinct tuning task that any architecture of ``model_name`` on the grid produces.

    See the module docstring for the method. Weight layers only set by groups outside
    ``spec.groups`` keep their unpruned shape.

    Args:
        model_name: a zoo model with ``width_key`` (all of ``harness.models.MODELS``).
        input_shape: (N, C, H, W) (or (C, H, W): batch 1), e.g. (1, 1, 28, 28).
        target: the resolved target (a board's ``host`` already resolved to its CPU).
        spec: the grid.
        num_classes: classifier outputs (the dataset's classes; 10 for Fashion-MNIST and CIFAR-10).
        build_kwargs: more builder options (as :func:`layer_dependencies`).
        cache_dir: when given, the task list is cached at ``cache_dir/grids/<key>.json`` and read
            back by later calls (no extraction then).
        progress: called as ``progress(done, total)`` over the covering architectures.

    Returns:
        A :class:`GridTasks`.

    Raises:
        ValueError: unknown model, a model that cannot be rebuilt from a spec, a group index
            outside the model's groups.
    """
    t0 = time.perf_counter()
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    groups, deps = layer_dependencies(model_name, shape, num_classes, build_kwargs)
    if spec.groups is not None and any(not 0 <= g < len(groups) for g in spec.groups):
        raise ValueError(f"grid groups {list(spec.groups)} outside the model's {len(groups)} groups "
                         f"(0..{len(groups) - 1}, harness.pruning.find_groups order)")
    widths = group_widths([g.channels for g in groups], spec)
    reqs = [tuple(sorted(set(d.in_groups) | set(d.out_groups))) for d in deps]
    reqs += [(g,) for g in range(len(groups))]  # bias reshapes, pooling: one group each
    combos = sum(len(list(itertools.product(*(widths[g] for g in set(r))))) for r in reqs[:len(deps)])
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / "grids" / f"{_cache_key(model_name, shape, num_classes, build_kwargs, target, spec)}.json"
        loaded = _load(cache_path, target) if cache_path.is_file() else None
        if loaded is not None:
            tasks, _meta = loaded
            log.info("grid tasks of %s from %s (%d tasks)", model_name, cache_path, len(tasks))
            return GridTasks(tuple(tasks), tuple(widths), combos, 0, _count_conv(tasks), True,
                             time.perf_counter() - t0, cache_path)
    rows = covering_specs(widths, reqs)
    found = TaskSet()
    with tempfile.TemporaryDirectory(prefix="hilprune-grid-") as work:
        for i, row in enumerate(rows):
            if progress is not None:
                progress(i, len(rows))
            for task in architecture_tasks(model_name, row, shape, target, Path(work), num_classes, build_kwargs):
                found.add(task)
        if progress is not None:
            progress(len(rows), len(rows))
    log.info("grid of %s: %d architectures cover %d layer width combinations -> %d distinct tasks", model_name,
             len(rows), combos, len(found))
    if cache_path is not None:
        _save(cache_path, found.tasks, {"model": model_name, "input_shape": list(shape), "spec": asdict(spec),
                                        "architectures": len(rows), "layer_combinations": combos})
    return GridTasks(tuple(found.tasks), tuple(widths), combos, len(rows), _count_conv(found.tasks), False,
                     time.perf_counter() - t0, cache_path)


def _count_conv(tasks: Sequence[Any]) -> int:
    return sum(1 for t in tasks if "conv2d" in t.task_name)
