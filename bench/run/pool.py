"""The GPU pool: which GPUs and host cores each concurrently running cell gets.

With G GPUs visible, up to G / gpus_needed cells run at once (`concurrent_cells`). Each worker sees
only its own GPUs (CUDA_VISIBLE_DEVICES by UUID, set in the worker before CUDA starts) and runs on
its own share of the host cores (CPU affinity), taken from the GPU's NUMA node where the machine
says which node that is. Shares are equal in size, so that no cell measures with more host cores
than another; cores left over from an uneven split stay unused. Cells never share a GPU or a core.

Everything here is pure or reads /sys; nothing imports torch or touches CUDA.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.run.machine import GpuInfo

# Host cores a worker on a GPU needs so that running beside other cells does not slow it down: the
# Python thread that launches the kernels (decode at small batch waits on it, not on the GPU) and
# one for everything else of the worker (the NVML sampler process, the allocator's and the
# tokenizer's threads, the kernel's interrupts). `concurrent_cells: auto` starts no more cells than
# the host has cores for at this rate. Measured and discussed in BENCHMARKS.md ("GPU pool").
MIN_CORES_PER_CELL = 2


def gpus_needed(cell: Any) -> int:
    """GPUs one worker of `cell` takes from the pool: its tp_size on cuda, none on the CPU."""
    return int(cell.gpus_needed)


def parse_cpulist(text: str) -> list[int]:
    """The cores of a Linux cpulist ("0-3,8,10-11")."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part.strip():
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


@dataclass(frozen=True)
class Topology:
    """The host cores this process may use, and the cores of each NUMA node ({} when unknown)."""

    allowed: tuple[int, ...]
    nodes: dict[int, frozenset[int]] = field(default_factory=dict)


def read_topology(root: str = "/sys/devices/system/node") -> Topology:
    """This process's allowed cores (a container's CPU limit shows here) and the NUMA nodes."""
    allowed = tuple(sorted(os.sched_getaffinity(0)))
    nodes: dict[int, frozenset[int]] = {}
    try:
        entries = sorted(Path(root).glob("node[0-9]*"))
    except OSError:
        entries = []
    for entry in entries:
        try:
            nodes[int(entry.name[4:])] = frozenset(parse_cpulist((entry / "cpulist").read_text()))
        except (OSError, ValueError):
            continue
    return Topology(allowed, nodes)


@dataclass(frozen=True)
class CoreShare:
    cpus: tuple[int, ...]
    numa_node: int | None  # the node all of these cores are on; None when unknown or mixed


def core_shares(n: int, topo: Topology, gpu_nodes: Sequence[int | None] = ()) -> list[CoreShare]:
    """n disjoint, equal shares of the allowed cores; share i prefers the NUMA node of GPU i (the
    GPUs spread over the shares in order when there are more of them than shares). More shares than
    cores (asked for outright, with a warning) take one core each, round the cores."""
    allowed = list(topo.allowed)
    if n < 1 or not allowed:
        return []
    if n > len(allowed):
        return [CoreShare((c,), _node_of([c], topo)) for c in (allowed * n)[:n]]
    size = len(allowed) // n
    targets = [gpu_nodes[i * len(gpu_nodes) // n] if gpu_nodes else None for i in range(n)]
    free = list(allowed)
    picked: list[list[int]] = [[] for _ in range(n)]
    for i, node in enumerate(targets):  # first each share's own node
        if node is None or node not in topo.nodes:
            continue
        mine = [c for c in free if c in topo.nodes[node]][:size]
        picked[i] = mine
        free = [c for c in free if c not in mine]
    for i in range(n):  # then the rest from whatever is left
        want = size - len(picked[i])
        picked[i] += free[:want]
        free = free[want:]
    return [CoreShare(tuple(sorted(cpus)), _node_of(cpus, topo)) for cpus in picked]


def _node_of(cpus: Sequence[int], topo: Topology) -> int | None:
    on = [node for node, members in topo.nodes.items() if set(cpus) <= members]
    return on[0] if len(on) == 1 else None


@dataclass(frozen=True)
class Slot:
    """What one running worker holds: its GPUs (none on the CPU) and its cores (None: not pinned)."""

    gpus: tuple[GpuInfo, ...] = ()
    cpus: tuple[int, ...] | None = None
    numa_node: int | None = None
    shares: tuple[int, ...] = ()  # which core shares (a tensor-parallel cell holds one per GPU set)

    @property
    def cuda_visible_devices(self) -> str | None:
        return ",".join(g.uuid for g in self.gpus) if self.gpus else None

    def fields(self) -> dict[str, Any]:
        """What a cell's process record and the logs say about where it ran."""
        return {
            "gpus": [g.uuid for g in self.gpus] or None,
            "gpu_names": [g.name for g in self.gpus] or None,
            "cpus": list(self.cpus) if self.cpus is not None else None,
            "numa_node": self.numa_node,
        }


def resolve_concurrency(asked: int | str, device: str, gpu_sets: int, cores: int) -> tuple[int, str]:
    """How many cells run at once, and why. On the CPU, cells share the host: auto runs one at a
    time (beside each other they would measure each other); on a GPU, auto runs one cell per free
    GPU set while each worker can have MIN_CORES_PER_CELL host cores."""
    cores = max(cores, 1)
    if device != "cuda":
        if asked == "auto":
            return 1, "auto: cells on the CPU run one at a time"
        n = min(int(asked), cores)
        return n, f"concurrent_cells={asked} on the CPU, {cores} host cores"
    sets = max(gpu_sets, 1)
    if asked == "auto":
        by_cores = max(cores // MIN_CORES_PER_CELL, 1)
        n = min(sets, by_cores)
        why = f"auto: {sets} GPU set(s), {cores} host cores ({MIN_CORES_PER_CELL} per cell at least)"
        return n, why
    n = min(int(asked), sets)
    return n, f"concurrent_cells={asked}, {sets} GPU set(s), {cores} host cores"


class Pool:
    """Hands out slots to the units the runner starts; thread-safe (the runner's scheduling thread
    acquires, and releases when a unit has ended).

    `size` slots of `unit` GPUs each (the fewest GPUs a runnable cell needs) and, when pinning,
    one core share each. A cell that needs k times `unit` GPUs (a tensor-parallel cell beside
    smaller ones) takes k slots: their GPUs and all their cores, so that each of its ranks has the
    cores one cell has."""

    def __init__(
        self, gpus: Iterable[GpuInfo], shares: Sequence[CoreShare], size: int, pin: bool, unit: int = 1
    ):
        self.gpus = list(gpus)
        self.shares = list(shares)
        self.size = max(size, 1)
        self.pin = pin  # False: one cell at a time, run as before (no affinity, no thread count)
        self.unit = max(unit, 1)
        self._free_gpus = list(self.gpus)
        self._free_shares = list(range(len(self.shares)))
        self._held = 0
        self._lock = threading.Lock()

    def slots_for(self, need: int) -> int:
        """Slots a unit needing `need` GPUs takes (at least one, at most all)."""
        return min(max(1, -(-need // self.unit)), self.size)

    def acquire(self, need: int) -> Slot | None:
        """A slot with `need` GPUs (fewer when fewer exist at all), or None while none is free."""
        with self._lock:
            need = min(need, len(self.gpus))
            k = self.slots_for(need)
            if self._held + k > self.size:
                return None
            if len(self._free_gpus) < need or (self.pin and len(self._free_shares) < k):
                return None
            shares = self._pick_shares(need, k) if self.pin else []
            nodes = {self.shares[s].numa_node for s in shares}
            node = nodes.pop() if len(nodes) == 1 else None
            # GPUs of the shares' node first, in index order.
            order = sorted(self._free_gpus, key=lambda g: (node is None or g.numa_node != node, g.index))
            gpus = tuple(sorted(order[:need], key=lambda g: g.index))
            for g in gpus:
                self._free_gpus.remove(g)
            self._held += k
            if not shares:
                return Slot(gpus)
            for s in shares:
                self._free_shares.remove(s)
            cpus = tuple(sorted(c for s in shares for c in self.shares[s].cpus))
            return Slot(gpus, cpus, node, tuple(shares))

    def _pick_shares(self, need: int, k: int) -> list[int]:
        """k free shares, all on one NUMA node with `need` free GPUs where there are such, else the first k."""
        by_node: dict[int | None, list[int]] = {}
        for i in self._free_shares:
            by_node.setdefault(self.shares[i].numa_node, []).append(i)
        for node, members in by_node.items():
            near = sum(g.numa_node == node for g in self._free_gpus)
            if node is not None and len(members) >= k and near >= need:
                return members[:k]
        return self._free_shares[:k]

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._free_gpus += [g for g in slot.gpus if g not in self._free_gpus]
            self._free_gpus.sort(key=lambda g: g.index)
            for s in slot.shares:
                if s not in self._free_shares:
                    self._free_shares.append(s)
            self._free_shares.sort()
            self._held -= self.slots_for(len(slot.gpus)) if self.gpus else 1

    def describe(self) -> dict[str, Any]:
        return {
            "slots": self.size,
            "gpus": [g.uuid for g in self.gpus],
            "core_shares": [{"cpus": list(s.cpus), "numa_node": s.numa_node} for s in self.shares]
            if self.pin
            else None,
        }


def one_at_a_time() -> Pool:
    """The pool of a runner that runs one cell at a time with no placement (tfbench ab, tests)."""
    return Pool([], [], 1, pin=False)


def build_pool(
    asked: int | str, device: str, gpus: Sequence[GpuInfo], needs: Sequence[int], topo: Topology
) -> tuple[Pool, dict[str, Any], list[str]]:
    """The pool of a run, what run.json says of it, and warnings. Only GPUs of the first one's model
    are used: the processes of a cell then always run on one GPU model, and so does every cell of
    the run (the run's numbers belong to one model, as its hardware label says)."""
    warnings: list[str] = []
    usable = [g for g in gpus if gpus and g.name == gpus[0].name] if device == "cuda" else []
    if len(usable) < len(gpus) and device == "cuda":
        warnings.append(
            f"{len(gpus) - len(usable)} GPU(s) of another model than {gpus[0].name} are left idle: "
            "one run measures one GPU model (choose with CUDA_VISIBLE_DEVICES)"
        )
    need = min([n for n in needs if n > 0] or [1])
    n, why = resolve_concurrency(asked, device, len(usable) // need if usable else 0, len(topo.allowed))
    if device != "cuda" and n > 1:
        warnings.append(
            f"concurrent_cells={asked} on the CPU: {n} cells run at once on their own cores, "
            "sharing the machine's memory bandwidth and caches; their numbers are not those of a cell alone"
        )
    cores = len(topo.allowed)
    if device == "cuda" and n > cores:
        warnings.append(
            f"concurrent_cells={asked}: {n} cells at once on {cores} host cores; they share cores, "
            "which slows a host-bound cell down (fine for cells that wait, as the sleep model does)"
        )
    elif device == "cuda" and asked != "auto" and cores // n < MIN_CORES_PER_CELL:
        warnings.append(
            f"concurrent_cells={asked}: {cores // n} host core(s) per cell, fewer than the "
            f"{MIN_CORES_PER_CELL} a worker on a GPU needs not to be slowed down (BENCHMARKS.md, GPU pool)"
        )
    pin = n > 1
    shares = core_shares(n, topo, [g.numa_node for g in usable]) if pin else []
    pool = Pool(usable, shares, n, pin, unit=need)
    meta = {
        "asked": asked,
        "used": n,
        "why": why,
        "min_cores_per_cell": MIN_CORES_PER_CELL,
        **pool.describe(),
    }
    return pool, meta, warnings
